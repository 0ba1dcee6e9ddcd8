using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using Mola.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Mola.Tests;

/// <summary>The writer against the format itself: bytes are checked in the file (8-byte little-endian
/// header length, JSON header, data in name order), then read back bit for bit.</summary>
public class SafeTensorsTests
{
    // Expected bytes come from .NET's own bit patterns, not from torch.
    static readonly float[] F32Values = [0f, -0f, 1.5f, -3.25e-8f, float.MaxValue, float.Epsilon, float.PositiveInfinity, float.NaN, 123456.79f, -1f / 3, 2e-38f, 7f];
    // bfloat16 = the top half of a float32: these round-trip exactly through a float32 tensor.
    static readonly ushort[] BF16Bits = [0x0000, 0x8000, 0x3F80, 0xC040, 0x7F7F, 0x0080, 0x7F80, 0xFF80, 0x3EAA, 0x4B18];
    static readonly ushort[] F16Bits = [0x0000, 0x8000, 0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x7C00, 0x3555, 0xB4CD];
    static readonly long[] I64Values = [0, 1, -1, long.MaxValue, long.MinValue, 1L << 40, -123456789012345];

    static Dictionary<string, (Tensor Tensor, string DType, long[] Shape, byte[] Bytes)> Cases()
    {
        var bf16 = BF16Bits.Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray();
        var f16 = F16Bits.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
        return new()
        {
            ["f32"] = (tensor(F32Values, [3, 4]), "F32", [3, 4], MemoryMarshal.AsBytes(F32Values.AsSpan()).ToArray()),
            ["bf16"] = (tensor(bf16, [2, 5]).to(ScalarType.BFloat16), "BF16", [2, 5], MemoryMarshal.AsBytes(BF16Bits.AsSpan()).ToArray()),
            ["f16"] = (tensor(f16, [5, 2]).to(ScalarType.Float16), "F16", [5, 2], MemoryMarshal.AsBytes(F16Bits.AsSpan()).ToArray()),
            ["i64"] = (tensor(I64Values, [7]), "I64", [7], MemoryMarshal.AsBytes(I64Values.AsSpan()).ToArray()),
            ["scalar"] = (tensor(2.5f), "F32", [], BitConverter.GetBytes(2.5f)),
            ["empty"] = (zeros([0, 3], ScalarType.Int64), "I64", [0, 3], []),
        };
    }

    [Fact]
    public void WriterLaysOutTheFormatAndReadsBackBitExact()
    {
        Assert.True(BitConverter.IsLittleEndian);
        var cases = Cases();
        string path = Path.Combine(TestUtil.TempDir(), "t.safetensors");
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "a \"quoted\" value" };
        SafeTensorsFile.Save(path, cases.Select(c => KeyValuePair.Create(c.Key, c.Value.Tensor)), metadata);

        // The raw file, parsed here independently of the reader.
        byte[] file = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(file);
        Assert.Equal(0, (8 + headerLength) % 8); // data aligned to 8 bytes
        using var header = JsonDocument.Parse(file.AsMemory(8, (int)headerLength));
        var meta = header.RootElement.GetProperty("__metadata__");
        Assert.Equal("pt", meta.GetProperty("format").GetString());
        Assert.Equal("a \"quoted\" value", meta.GetProperty("note").GetString());
        long offset = 0;
        foreach (var name in cases.Keys.Order(StringComparer.Ordinal))
        {
            var (_, dtype, shape, bytes) = cases[name];
            var entry = header.RootElement.GetProperty(name);
            Assert.Equal(dtype, entry.GetProperty("dtype").GetString());
            Assert.Equal(shape, entry.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()));
            Assert.Equal([offset, offset + bytes.Length], entry.GetProperty("data_offsets").EnumerateArray().Select(d => d.GetInt64()));
            Assert.Equal(bytes, file.AsSpan((int)(8 + headerLength + offset), bytes.Length).ToArray());
            offset += bytes.Length;
        }
        Assert.Equal(8 + headerLength + offset, file.Length);

        using var f = SafeTensorsFile.Open(path);
        Assert.Equal(metadata, f.Metadata);
        Assert.Equal(cases.Keys.Order(), f.Tensors.Keys.Order());
        foreach (var (name, (_, dtype, shape, bytes)) in cases)
        {
            using var t = f.Read(name);
            Assert.Equal(dtype, f.Tensors[name].DType);
            Assert.Equal(shape, t.shape);
            Assert.Equal(bytes, t.bytes.ToArray());
        }
        foreach (var c in cases.Values) c.Tensor.Dispose();
    }

    [Fact]
    public void ReadConvertsToTheRequestedDType()
    {
        string path = Path.Combine(TestUtil.TempDir(), "t.safetensors");
        using (var bf = tensor(new[] { 1.5f, -2f, 0.15625f, 3f }).to(ScalarType.BFloat16))
            SafeTensorsFile.Save(path, [KeyValuePair.Create("w", bf)]);
        using var f = SafeTensorsFile.Open(path);
        using var t = f.Read("w", ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, t.dtype);
        Assert.Equal(new[] { 1.5f, -2f, 0.15625f, 3f }, t.data<float>().ToArray());
    }

    public static TheoryData<string> FloatDTypes => ["BF16", "F16", "F32", "F64"];

    [Theory]
    [MemberData(nameof(FloatDTypes))]
    public void TheFiniteScanAgreesWithDotNetOnEveryPositionAndSpecialValue(string dtype)
    {
        // Files laid out here byte by byte; the expected verdict is .NET's IsFinite of each decoded value. The
        // extremes (largest finite, subnormals, -0) must pass; NaN and both infinities must fail wherever they sit
        // (first, in a vector, in the tail after the last full vector).
        int size = dtype switch { "F32" => 4, "F64" => 8, _ => 2 };
        (ulong Bits, bool Finite)[] special = dtype switch
        {
            "BF16" => [(0x7F7F, true), (0x0001, true), (0x8000, true), (0x7FC0, false), (0x7F80, false), (0xFF80, false), (0xFF81, false)],
            "F16" => [(0x7BFF, true), (0x0001, true), (0x8000, true), (0x7E00, false), (0x7C00, false), (0xFC00, false), (0x7C01, false)],
            "F32" => [(0x7F7F_FFFF, true), (1, true), (0x8000_0000, true), (0x7FC0_0000, false), (0x7F80_0000, false), (0xFF80_0000, false), (0x7F80_0001, false)],
            _ => [(0x7FEF_FFFF_FFFF_FFFF, true), (1, true), (0x8000_0000_0000_0000, true), (0x7FF8_0000_0000_0000, false), (0x7FF0_0000_0000_0000, false), (0xFFF0_0000_0000_0000, false)],
        };
        foreach (var (bits, _) in special)
            Assert.Equal(Decode(dtype, bits) is var v && double.IsFinite(v), special.First(x => x.Bits == bits).Finite);
        var random = new Random(5);
        string dir = TestUtil.TempDir();
        foreach (int length in new[] { 1, 7, 16, 33, 100 })
            foreach (var (bits, finite) in special)
                foreach (int at in new[] { 0, length / 2, length - 1 })
                {
                    var values = Enumerable.Range(0, length).Select(_ => Encode(dtype, random.NextDouble() * 200 - 100)).ToArray();
                    values[at] = bits;
                    string path = Path.Combine(dir, $"{dtype}-{length}-{bits:x}-{at}.safetensors");
                    WriteOneTensor(path, dtype, size, values);
                    using var f = SafeTensorsFile.Open(path);
                    bool expected = values.All(b => double.IsFinite(Decode(dtype, b)));
                    Assert.Equal(finite, expected);
                    if (expected) f.RequireFinite("x");
                    else Assert.Contains("tensor \"x\" holds NaN or infinite values", Assert.Throws<MolaException>(() => f.RequireFinite("x")).Message);
                }
    }

    [Fact]
    public void WeightsANarrowingConversionMakesInfiniteAreRefused()
    {
        // 1e5 is finite in BF16 (and float32) but past float16's largest value, 65504.
        string path = Path.Combine(TestUtil.TempDir(), "t.safetensors");
        using (var bf = tensor(new[] { 1f, 1e5f }).to(ScalarType.BFloat16)) SafeTensorsFile.Save(path, [KeyValuePair.Create("w", bf)]);
        using var f = SafeTensorsFile.Open(path);
        using (var f32 = empty(2, ScalarType.Float32)) f.ReadInto("w", f32);
        using var f16 = empty(2, ScalarType.Float16);
        Assert.Contains($"{path}: tensor \"w\" holds NaN or infinite values", Assert.Throws<MolaException>(() => f.ReadInto("w", f16)).Message);

        // F32's largest value rounds up to infinity in BF16 (whose largest is 3.3895e38).
        string f32Path = Path.Combine(TestUtil.TempDir(), "t32.safetensors");
        using (var big = tensor(new[] { 1f, float.MaxValue })) SafeTensorsFile.Save(f32Path, [KeyValuePair.Create("w", big)]);
        using var f32File = SafeTensorsFile.Open(f32Path);
        using var bf16 = empty(2, ScalarType.BFloat16);
        Assert.Contains("holds NaN or infinite values", Assert.Throws<MolaException>(() => f32File.ReadInto("w", bf16)).Message);
    }

    static double Decode(string dtype, ulong bits) => dtype switch
    {
        "BF16" => BitConverter.Int32BitsToSingle((int)(bits << 16)),
        "F16" => (double)BitConverter.UInt16BitsToHalf((ushort)bits),
        "F32" => BitConverter.Int32BitsToSingle((int)(uint)bits),
        _ => BitConverter.Int64BitsToDouble((long)bits),
    };

    static ulong Encode(string dtype, double x) => dtype switch
    {
        "BF16" => (ulong)(BitConverter.SingleToUInt32Bits((float)x) >> 16),
        "F16" => BitConverter.HalfToUInt16Bits((Half)x),
        "F32" => BitConverter.SingleToUInt32Bits((float)x),
        _ => BitConverter.DoubleToUInt64Bits(x),
    };

    static void WriteOneTensor(string path, string dtype, int size, ulong[] values)
    {
        byte[] header = System.Text.Encoding.UTF8.GetBytes($"{{\"x\":{{\"dtype\":\"{dtype}\",\"shape\":[{values.Length}],\"data_offsets\":[0,{values.Length * size}]}}}}");
        var file = new byte[8 + header.Length + values.Length * size];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)header.Length);
        header.CopyTo(file, 8);
        for (int i = 0; i < values.Length; i++)
        {
            var span = file.AsSpan(8 + header.Length + i * size, size);
            if (size == 2) BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)values[i]);
            else if (size == 4) BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)values[i]);
            else BinaryPrimitives.WriteUInt64LittleEndian(span, values[i]);
        }
        File.WriteAllBytes(path, file);
    }

    [Fact]
    public void SaveReplacesAnExistingFileAndLeavesNoTemporary()
    {
        string dir = TestUtil.TempDir(), path = Path.Combine(dir, "t.safetensors");
        File.WriteAllText(path, "old");
        using (var a = tensor(new long[] { 4, 5 })) SafeTensorsFile.Save(path, [KeyValuePair.Create("a", a)]);
        Assert.Equal(["t.safetensors"], Directory.GetFiles(dir).Select(Path.GetFileName));
        using var f = SafeTensorsFile.Open(path);
        using var t = f.Read("a");
        Assert.Equal(new long[] { 4, 5 }, t.data<long>().ToArray());
    }
}

/// <summary>Tensors larger than one Span (2 GB, e.g. a float32 Gemma embedding) are copied a block of rows
/// at a time; a tiny span limit sends small tensors down that path.</summary>
[Collection(RunsAloneCollection.Name)]   // changes SafeTensorsFile.MaxSpanBytes, a static every reader sees
public class SafeTensorsChunkedReadTests
{
    [Fact]
    public void ChunkedCopyGivesTheSameValues()
    {
        // Row sizes against a 64-byte limit: 28 bytes (2 rows a block, 5 blocks), 10 bytes (6 rows a
        // block, the last block short), 96 bytes (one row a block, each row over the limit), and a
        // single 160-byte row (copied whole: it cannot be split by rows).
        var shapes = new Dictionary<string, (long[] Shape, ScalarType Type)>
        {
            ["a"] = ([10, 7], ScalarType.Float32),
            ["b"] = ([9, 5], ScalarType.BFloat16),
            ["c"] = ([5, 3, 8], ScalarType.Float32),
            ["d"] = ([1, 40], ScalarType.Float32),
            ["e"] = ([6, 4], ScalarType.Int64),
        };
        string path = Path.Combine(TestUtil.TempDir(), "chunks.safetensors");
        // Distinct values per tensor (integers, exact in bfloat16 up to 256), so a block copied from the
        // wrong offset cannot go unnoticed.
        var expected = shapes.ToDictionary(kv => kv.Key, kv =>
        {
            long n = kv.Value.Shape.Aggregate(1L, (x, y) => x * y);
            return Enumerable.Range(0, (int)n).Select(i => (double)(i + 1 + 50 * (kv.Key[0] - 'a'))).ToArray();
        });
        using (NewDisposeScope())
            SafeTensorsFile.Save(path, shapes.Select(kv =>
                KeyValuePair.Create(kv.Key, tensor(expected[kv.Key], kv.Value.Shape).to(kv.Value.Type))));

        long saved = SafeTensorsFile.MaxSpanBytes;
        SafeTensorsFile.MaxSpanBytes = 64;
        try
        {
            using var f = SafeTensorsFile.Open(path);
            foreach (var (name, (shape, type)) in shapes)
            {
                using var t = f.Read(name);
                Assert.Equal(type, t.dtype);
                Assert.Equal(shape, t.shape);
                using var asDouble = t.to(ScalarType.Float64);
                Assert.Equal(expected[name], asDouble.data<double>().ToArray());
                // And through a conversion, as the model loader reads.
                using var converted = f.Read(name, ScalarType.Float64);
                Assert.Equal(expected[name], converted.data<double>().ToArray());
            }
        }
        finally
        {
            SafeTensorsFile.MaxSpanBytes = saved;
        }
    }
}
