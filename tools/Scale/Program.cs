// The scale harness: random-weight checkpoints at real shapes, and the peak memory and time of a mola command
// run on them. Not a test (a 7B checkpoint is 13.5 GB and a run takes most of the machine); bench/NOTES.md
// records what it measured, with the commands.
//
//   dotnet run -c Release --project tools/Scale -- make tinyllama-1.1b /data/tinyllama [--dtype bfloat16]
//   dotnet run -c Release --project tools/Scale -- measure -- generate --base-model /data/tinyllama --prompt hi
//
// `measure` runs the built CLI (src/Mola.Cli/bin/Release/net10.0/Mola.Cli.dll, or --cli PATH) as a child
// process, passes its output through, samples /proc/PID/status every 50 ms and prints one JSON line: wall
// seconds, the exit code, and the peaks of resident memory: anonymous (allocated), file-backed (mapped
// checkpoint pages) and their sum at its highest (the figure the kernel's OOM killer and the targets see).
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Mola.Platform;
using Mola;
using Mola.Models;
using static TorchSharp.torch;

Native.Initialise();   // threads and allocator settings, as every mola command gets them
return args.Length > 0 && args[0] == "make" ? Make(args[1..])
    : args.Length > 0 && args[0] == "measure" ? Measure(args[1..])
    : Usage();

static int Usage()
{
    Console.Error.WriteLine("usage: scale make SHAPE DIR [--dtype bfloat16|float16|float32] [--seed N]   (shapes: " + string.Join(", ", ModelShapes.All.Keys) + ")");
    Console.Error.WriteLine("       scale measure [--cli PATH] -- MOLA-ARGS...");
    return 2;
}

static int Make(string[] a)
{
    if (a.Length < 2 || !ModelShapes.All.TryGetValue(a[0], out var shape)) return Usage();
    string dir = a[1];
    string dtypeName = Opt(a, "--dtype") ?? "bfloat16";
    var dtype = TorchNames.ParseDType(dtypeName);
    random.manual_seed(int.Parse(Opt(a, "--seed") ?? "0", CultureInfo.InvariantCulture));
    Directory.CreateDirectory(dir);
    File.WriteAllText(Path.Combine(dir, "config.json"), shape.ConfigJson(dtypeName));
    // A small SentencePiece model: the vocabulary may be smaller than vocab_size (the ids it makes exist).
    File.Copy(Path.Combine(AppContext.BaseDirectory, "tokenizer.model"), Path.Combine(dir, "tokenizer.model"), overwrite: true);

    // Shards of at most 2 GB, written one at a time, so that no more than one shard is ever in memory.
    const long ShardBytes = 2L << 30;
    var shards = new List<List<(string Name, long[] Shape)>> { new() };
    long inShard = 0, total = 0;
    foreach (var t in shape.Tensors())
    {
        long bytes = t.Shape.Aggregate(1L, (x, y) => x * y) * (dtype == ScalarType.Float32 ? 4 : 2);
        if (inShard > 0 && inShard + bytes > ShardBytes) { shards.Add([]); inShard = 0; }
        shards[^1].Add(t);
        inShard += bytes;
        total += bytes;
    }
    var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
    var clock = Stopwatch.StartNew();
    for (int s = 0; s < shards.Count; s++)
    {
        string file = $"model-{s + 1:00000}-of-{shards.Count:00000}.safetensors";
        using var scope = NewDisposeScope();
        var tensors = shards[s].Select(t => new KeyValuePair<string, Tensor>(t.Name, Random(t.Name, t.Shape, dtype))).ToList();
        SafeTensorsFile.Save(Path.Combine(dir, file), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var (name, _) in shards[s]) weightMap[name] = file;
        Console.Error.WriteLine($"{file}: {shards[s].Count} tensors ({clock.Elapsed.TotalSeconds:F0} s)");
    }
    var index = new { metadata = new { total_size = total }, weight_map = weightMap };
    File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), JsonSerializer.Serialize(index, new JsonSerializerOptions { WriteIndented = true }));
    Console.WriteLine($"{dir}: {a[0]} in {dtypeName}, {total / (double)(1L << 30):F2} GiB in {shards.Count} shards");
    return 0;
}

// Norm weights 1, everything else N(0, 0.02^2) as Hugging Face initialises LLaMA.
static Tensor Random(string name, long[] shape, ScalarType dtype) =>
    name.EndsWith("norm.weight", StringComparison.Ordinal) ? ones(shape, dtype) : (randn(shape) * 0.02).to(dtype);

static int Measure(string[] a)
{
    int sep = Array.IndexOf(a, "--");
    if (sep < 0) return Usage();
    string cli = Opt(a[..sep], "--cli") ?? Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../../src/Mola.Cli/bin/Release/net10.0/Mola.Cli.dll"));
    if (!File.Exists(cli)) { Console.Error.WriteLine($"{cli}: not found (dotnet build -c Release src/Mola.Cli, or --cli PATH)"); return 2; }
    var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false };
    psi.ArgumentList.Add(cli);
    foreach (var arg in a[(sep + 1)..]) psi.ArgumentList.Add(arg);
    var clock = Stopwatch.StartNew();
    using var p = Process.Start(psi)!;
    long anon = 0, file = 0, sum = 0;
    while (!p.WaitForExit(50))
    {
        var (an, fi) = Rss(p.Id);
        anon = Math.Max(anon, an);
        file = Math.Max(file, fi);
        sum = Math.Max(sum, an + fi);
    }
    double Gib(long kb) => Math.Round(kb / (1024.0 * 1024.0), 2);
    Console.WriteLine(JsonSerializer.Serialize(new
    {
        exit_code = p.ExitCode,
        seconds = Math.Round(clock.Elapsed.TotalSeconds, 1),
        peak_resident_gib = Gib(sum),
        peak_anonymous_gib = Gib(anon),
        peak_file_gib = Gib(file),
    }));
    return p.ExitCode;
}

/// <summary>Resident anonymous and file-backed memory of a process, in KiB (0, 0 once it has gone).</summary>
static (long Anon, long File) Rss(int pid)
{
    try
    {
        long anon = 0, file = 0;
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("RssAnon:", StringComparison.Ordinal)) anon = Kb(line);
            else if (line.StartsWith("RssFile:", StringComparison.Ordinal)) file = Kb(line);
        }
        return (anon, file);
    }
    catch (IOException) { return (0, 0); }
    static long Kb(string line) => long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
}

static string? Opt(string[] a, string name) => Array.IndexOf(a, name) is int i and >= 0 && i + 1 < a.Length ? a[i + 1] : null;
