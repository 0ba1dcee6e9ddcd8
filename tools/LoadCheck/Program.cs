using System.Diagnostics;
using Mola.Platform;
using Mola.Models;
using TorchSharp;
using static TorchSharp.torch;

// What the NaN/Inf check of base weights costs next to loading them: writes a random BF16 safetensors file of
// about --gb gigabytes in 7B-shaped tensors ([4096, 4096] and [11008, 4096]), reads every tensor into float32 as
// ModelLoader does, with and without the check, and deletes the file. Usage (bench/NOTES.md):
//   dotnet run -c Release --project tools/LoadCheck -- [--gb 1.5] [--dir /tmp] [--rounds 3]
double gb = 1.5;
string dir = Path.GetTempPath();
int rounds = 3;
for (int i = 0; i < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--gb": gb = double.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
        case "--dir": dir = args[i + 1]; break;
        case "--rounds": rounds = int.Parse(args[i + 1]); break;
        default: Console.Error.WriteLine($"unknown option {args[i]}"); return 1;
    }
}
Native.Initialise();
string path = Path.Combine(dir, $"loadcheck-{Environment.ProcessId}.safetensors");
long[][] shapes = [[4096, 4096], [11008, 4096]];
var tensors = new List<KeyValuePair<string, Tensor>>();
long bytes = 0;
for (int i = 0; bytes < gb * 1e9; i++)
{
    var shape = shapes[i % 2];
    tensors.Add(new($"t{i:D3}", randn(shape).to(ScalarType.BFloat16)));
    bytes += shape[0] * shape[1] * 2;
}
try
{
    SafeTensorsFile.Save(path, tensors);
    foreach (var (_, t) in tensors) t.Dispose();
    Console.WriteLine($"{tensors.Count} BF16 tensors, {bytes / 1e9:F2} GB, read into float32; best of {rounds} rounds (the file stays in the page cache)");
    using var file = SafeTensorsFile.Open(path);
    foreach (bool check in new[] { false, true, false, true })
    {
        double best = double.MaxValue;
        for (int r = 0; r < rounds; r++)
        {
            var clock = Stopwatch.StartNew();
            foreach (var name in file.Tensors.Keys)
            {
                using var dst = empty(file.Tensors[name].Shape, ScalarType.Float32);
                file.ReadInto(name, dst, checkFinite: check);
            }
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        Console.WriteLine($"  {(check ? "with the check   " : "without the check")}: {best:F3} s = {bytes / 1e9 / best:F2} GB/s of BF16 read");
    }
    double alone = double.MaxValue;
    for (int r = 0; r < rounds; r++)
    {
        var clock = Stopwatch.StartNew();
        foreach (var name in file.Tensors.Keys) file.RequireFinite(name);
        alone = Math.Min(alone, clock.Elapsed.TotalSeconds);
    }
    Console.WriteLine($"  the check alone  : {alone:F3} s = {bytes / 1e9 / alone:F2} GB/s; a 13.5 GB 7B checkpoint: {13.5 / (bytes / 1e9 / alone):F1} s");
}
finally { File.Delete(path); }
return 0;
