Mola.NativeEnvironment.Initialise();   // before anything loads libtorch

return Mola.Cli.Cli.Execute(args);
