Mola.Platform.Native.Initialise();   // before anything touches libtorch

return Mola.Cli.Cli.Execute(args);
