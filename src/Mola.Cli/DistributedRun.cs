using Mola.Distributed;

namespace Mola.Cli;

/// <summary>A command under mpirun: rank 0 prints as one process does; the other ranks print nothing but an error of
/// their own (<c>error: rank R: ...</c>); every rank then leaves MPI (<see cref="DataParallel.Finish"/>), a failed one
/// aborting the job. Without mpirun the command runs as it is.</summary>
static class DistributedRun
{
    /// <summary>Under mpirun, a rank other than 0: every rank parses the same command line, rank 0 says what is wrong with it.</summary>
    public static bool OtherRank => Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_RANK") is string r && r != "0";

    public static int Run(Func<DataParallel?, int> command)
    {
        if (!DataParallel.Launched && Environment.GetEnvironmentVariable("PMI_RANK") is null) return command(null);
        DataParallel? parallel;
        try { parallel = DataParallel.Start(); }
        catch (MolaException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
        var errors = new StringWriter();
        if (!parallel!.IsRoot)
        {
            Console.SetOut(TextWriter.Null);
            Console.SetError(errors);
        }
        int exit = command(parallel);
        string? error = errors.ToString().Split('\n').FirstOrDefault(l => l.StartsWith("error: ", StringComparison.Ordinal))?["error: ".Length..].TrimEnd();
        parallel.Finish(exit == 0, error);
        return exit;
    }
}
