using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Xunit;

namespace Mola.Tests;

/// <summary>
/// <c>--report-to tensorboard</c> and <c>loss.png</c>: the event file is read back here by hand (TFRecord framing with
/// its masked CRC-32C checks, then the Event / Summary / HistogramProto protobuf fields) and its values compared with
/// metrics.jsonl and eval.jsonl.
/// </summary>
[Trait("Category", "Slow")]
public class MonitoringTests
{
    /// <summary>One summary value: a scalar, or a histogram's (min, max, num, sum, bucket counts).</summary>
    sealed record Value(long Step, string Tag, float? Scalar, double[]? Histogram, double[]? Buckets);

    const string SessionStart = "(SessionLog START)";

    [Fact]
    public void TensorBoardEventsHoldTheMetricsOfEveryStepAndTheExpertUsageOfEveryLayer()
    {
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run(TrainCliTests.Args(dir, "--max-steps", "4", "--save-steps", "0", "--val-set-size", "4", "--eval-steps", "2", "--report-to", "tensorboard"),
            TimeSpan.FromMinutes(4));
        Assert.True(r.ExitCode == 0, r.ToString());
        var files = Directory.GetFiles(Path.Combine(dir, "tensorboard"), "events.out.tfevents.*", SearchOption.AllDirectories);
        var values = Assert.Single(files) is var file ? ReadEvents(file) : [];
        var metrics = TrainCliTests.Metrics(dir);
        Assert.Equal(4, metrics.Count);
        foreach (var m in metrics)
        {
            long step = m.GetProperty("step").GetInt64();
            float Scalar(string tag) => Assert.Single(values, v => v.Step == step && v.Tag == tag).Scalar!.Value;
            foreach (var (tag, key) in new[] { ("train/loss", "loss"), ("train/ce_loss", "ce_loss"), ("train/aux_loss", "aux_loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm") })
                Assert.Equal((float)m.GetProperty(key).GetDouble(), Scalar(tag));
            // metrics.jsonl rounds tokens/s to one decimal.
            Assert.Equal(m.GetProperty("tokens_per_second").GetDouble(), Scalar("train/tokens_per_second"), 0.051);
            if (m.TryGetProperty("eval_loss", out var e)) Assert.Equal((float)e.GetDouble(), Scalar("eval/loss"));

            // Experts 2,4,8 with top-k 1,2,2: each layer's choices, every token's top-k over its modules.
            var layers = Enumerable.Range(0, 3).Select(l => Assert.Single(values, v => v.Step == step && v.Tag == $"experts/layer_{l:D2}")).ToList();
            int[] experts = [2, 4, 8], topK = [1, 2, 2];
            double tokensTimesModules = layers[0].Histogram![2] / topK[0];
            for (int l = 0; l < 3; l++)
            {
                var (min, max, num) = (layers[l].Histogram![0], layers[l].Histogram![1], layers[l].Histogram![2]);
                Assert.True(min >= 0 && max <= experts[l] - 1, $"layer {l}: experts {min}..{max}");
                Assert.Equal(tokensTimesModules * topK[l], num);
                Assert.Equal(num, layers[l].Buckets!.Sum());
            }
        }
        Assert.Equal(2, values.Count(v => v.Tag == "eval/loss"));
        using var final = JsonDocument.Parse(File.ReadAllLines(Path.Combine(dir, "eval.jsonl")).Last());
        Assert.Equal((float)final.RootElement.GetProperty("eval_loss").GetDouble(), values.Single(v => v.Tag == "eval/loss" && v.Step == 4).Scalar);
        AssertPng(Path.Combine(dir, "loss.png"));
    }

    /// <summary>A run that goes on past its last checkpoint, then is resumed from it: the resumed run's event file starts
    /// with a SessionLog START at its first step, and read as TensorBoard reads a directory (files in name order, a START
    /// at step S dropping what came before at steps S and later) every step shows once, with metrics.jsonl's values.</summary>
    [Fact]
    public void AResumedRunPurgesTheStepsLoggedAfterItsCheckpoint()
    {
        string dir = TestUtil.TempDir();
        string[] run = ["--max-steps", "4", "--save-steps", "2", "--save-total-limit", "3", "--report-to", "tensorboard"];
        var first = CliRunner.Run(TrainCliTests.Args(dir, run), TimeSpan.FromMinutes(4));
        Assert.True(first.ExitCode == 0, first.ToString());
        var resumed = CliRunner.Run(TrainCliTests.Args(dir, [.. run, "--resume", Path.Combine(dir, "checkpoint-2")]), TimeSpan.FromMinutes(4));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());

        var files = Directory.GetFiles(Path.Combine(dir, "tensorboard"), "events.out.tfevents.*").Order(StringComparer.Ordinal).ToList();
        Assert.Equal(2, files.Count);
        var (before, after) = (ReadEvents(files[0]), ReadEvents(files[1]));
        Assert.DoesNotContain(before, v => v.Tag == SessionStart);
        Assert.Equal(new Value(3, SessionStart, null, null, null), after[0]);   // before any value of the resumed run
        Assert.Single(after, v => v.Tag == SessionStart);
        // Without the purge, steps 3 and 4 would show twice.
        Assert.Equal(2, before.Concat(after).Count(v => v.Tag == "train/loss" && v.Step == 3));

        var shown = new List<Value>();
        foreach (var v in before.Concat(after))
        {
            if (v.Tag == SessionStart) shown.RemoveAll(x => x.Step >= v.Step);
            else shown.Add(v);
        }
        var losses = shown.Where(v => v.Tag == "train/loss").ToList();
        Assert.Equal([1L, 2, 3, 4], losses.Select(v => v.Step));
        var metrics = TrainCliTests.Metrics(dir);
        Assert.Equal(metrics.Select(m => (float)m.GetProperty("loss").GetDouble()), losses.Select(v => v.Scalar!.Value));
        Assert.All(shown.GroupBy(v => (v.Tag, v.Step)), g => Assert.Single(g));
    }

    [Fact]
    public void EveryRunDrawsLossPngAndAResumeRedrawsIt()
    {
        string dir = TestUtil.TempDir();
        var r = CliRunner.Run(TrainCliTests.Args(dir, "--max-steps", "4", "--save-steps", "2", "--save-total-limit", "3"), TimeSpan.FromMinutes(4));
        Assert.True(r.ExitCode == 0, r.ToString());
        AssertPng(Path.Combine(dir, "loss.png"));
        Assert.False(Directory.Exists(Path.Combine(dir, "tensorboard")));   // only when asked for
        File.Delete(Path.Combine(dir, "loss.png"));
        var resumed = CliRunner.Run(TrainCliTests.Args(dir, "--max-steps", "4", "--save-steps", "2", "--save-total-limit", "3", "--resume", Path.Combine(dir, "checkpoint-2")),
            TimeSpan.FromMinutes(4));
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        AssertPng(Path.Combine(dir, "loss.png"));
        var (train, _) = Mola.Training.Monitoring.LossCurve.Read(dir);
        Assert.Equal([1L, 2, 3, 4], train.Select(p => p.Step));
    }

    static void AssertPng(string path)
    {
        byte[] png = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0d, 0x0a, 0x1a, 0x0a }, png[..8]);
        Assert.Equal("IHDR", Encoding.ASCII.GetString(png, 12, 4));
        Assert.Equal(800, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)));
        Assert.Equal(500, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)));
    }

    /// <summary>TFRecord: u64 length, u32 masked CRC-32C of the length, the data, u32 masked CRC-32C of the data.</summary>
    static List<Value> ReadEvents(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        var values = new List<Value>();
        int at = 0;
        while (at < bytes.Length)
        {
            ulong length = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));
            Assert.Equal(MaskedCrc(bytes.AsSpan(at, 8)), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8)));
            var data = bytes.AsSpan(at + 12, (int)length);
            Assert.Equal(MaskedCrc(data), BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + (int)length)));
            ReadEvent(data, values);
            at += 12 + (int)length + 4;
        }
        return values;
    }

    // Event: 1 wall_time (double), 2 step (int64), 3 file_version (string), 5 summary (Summary: 1 value, repeated).
    // Summary.Value: 1 tag, 2 simple_value (float), 5 histo (HistogramProto: 1 min, 2 max, 3 num, 4 sum,
    // 5 sum_squares, 6 bucket_limit and 7 bucket, packed doubles).
    static void ReadEvent(ReadOnlySpan<byte> data, List<Value> values)
    {
        long step = 0;
        var summaries = new List<byte[]>();
        foreach (var (field, wire, varint, payload) in Fields(data))
        {
            if (field == 2 && wire == 0) step = (long)varint;
            if (field == 5 && wire == 2) summaries.Add(payload);
            // 7 session_log (SessionLog: 1 status, START = 1)
            if (field == 7 && wire == 2 && Fields(payload).Any(f => f.Field == 1 && f.Varint == 1)) values.Add(new Value(step, SessionStart, null, null, null));
        }
        foreach (var summary in summaries)
            foreach (var (field, _, _, value) in Fields(summary))
            {
                if (field != 1) continue;
                string tag = "";
                float? scalar = null;
                double[]? histogram = null, buckets = null;
                foreach (var (f, w, _, p) in Fields(value))
                {
                    if (f == 1) tag = Encoding.UTF8.GetString(p);
                    if (f == 2 && w == 5) scalar = BinaryPrimitives.ReadSingleLittleEndian(p);
                    if (f == 5 && w == 2)
                    {
                        histogram = new double[5];
                        var list = new List<double>();
                        foreach (var (hf, hw, _, hp) in Fields(hp0: p))
                        {
                            if (hf is >= 1 and <= 5 && hw == 1) histogram[hf - 1] = BinaryPrimitives.ReadDoubleLittleEndian(hp);
                            if (hf == 7 && hw == 2) for (int i = 0; i < hp.Length; i += 8) list.Add(BinaryPrimitives.ReadDoubleLittleEndian(hp.AsSpan(i)));
                            if (hf == 7 && hw == 1) list.Add(BinaryPrimitives.ReadDoubleLittleEndian(hp));
                        }
                        buckets = [.. list];
                    }
                }
                values.Add(new Value(step, tag, scalar, histogram, buckets));
            }
    }

    static List<(int Field, int Wire, ulong Varint, byte[] Payload)> Fields(ReadOnlySpan<byte> hp0)
    {
        var fields = new List<(int, int, ulong, byte[])>();
        int at = 0;
        ulong Varint(ReadOnlySpan<byte> s)
        {
            ulong v = 0;
            for (int shift = 0; ; shift += 7)
            {
                byte b = s[at++];
                v |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80) return v;
            }
        }
        while (at < hp0.Length)
        {
            ulong key = Varint(hp0);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: fields.Add((field, wire, Varint(hp0), [])); break;
                case 1: fields.Add((field, wire, 0, hp0.Slice(at, 8).ToArray())); at += 8; break;
                case 5: fields.Add((field, wire, 0, hp0.Slice(at, 4).ToArray())); at += 4; break;
                case 2:
                    int n = (int)Varint(hp0);
                    fields.Add((field, wire, 0, hp0.Slice(at, n).ToArray()));
                    at += n;
                    break;
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
        return fields;
    }

    /// <summary>TFRecord's checksum: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), rotated and offset.</summary>
    static uint MaskedCrc(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int i = 0; i < 8; i++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1;
        }
        crc = ~crc;
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8;
    }
}
