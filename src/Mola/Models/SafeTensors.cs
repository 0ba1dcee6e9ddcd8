using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Where one tensor lies in a weights file: its dtype (safetensors names), shape and bytes (for a torch
/// <c>.bin</c>, from its first element; a strided view need not fill them).</summary>
public sealed record TensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A strict, memory-mapped safetensors reader: the header is validated on open (dtypes, shapes,
/// offsets inside the file and not overlapping) and each tensor is materialised only when read,
/// so a checkpoint is never copied whole.
/// </summary>
public sealed class SafeTensorsFile : ITensorFile
{
    static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8),
        ["F32"] = (ScalarType.Float32, 4),
        ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2),
        ["I64"] = (ScalarType.Int64, 8),
        ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2),
        ["I8"] = (ScalarType.Int8, 1),
        ["U8"] = (ScalarType.Byte, 1),
        ["BOOL"] = (ScalarType.Bool, 1),
    };

    const long MaxHeaderBytes = 100_000_000; // the format's own limit

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly long _dataStart;

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafeTensorsFile(string path, long dataStart, Dictionary<string, TensorInfo> tensors, Dictionary<string, string> metadata, MemoryMappedFile? map, MemoryMappedViewAccessor? view)
    {
        Path = path;
        _dataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
        _map = map;
        _view = view;
    }

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        long fileLength;
        byte[] headerBytes;
        // The length of the opened file, not of the path: Hugging Face's cache links each snapshot file to its blob,
        // and a symbolic link's own length is that of the path it holds.
        using (var fs = InputFile.OpenRead(path))
        {
            fileLength = fs.Length;
            if (fileLength < 8) throw new MolaException($"{path}: truncated safetensors file ({fileLength} bytes, less than the 8-byte header length)");
            Span<byte> len = stackalloc byte[8];
            fs.ReadExactly(len);
            ulong n = BitConverter.ToUInt64(len);
            if (n > (ulong)(fileLength - 8))
                throw new MolaException($"{path}: header length {n} is larger than the file ({fileLength} bytes): truncated or not a safetensors file");
            if (n > MaxHeaderBytes) throw new MolaException($"{path}: header length {n} exceeds the format's limit of {MaxHeaderBytes} bytes");
            headerBytes = new byte[n];
            fs.ReadExactly(headerBytes);
        }
        long dataStart = 8 + headerBytes.Length;
        long dataLength = fileLength - dataStart;
        var (tensors, metadata) = ParseHeader(path, headerBytes, dataLength);
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        if (fileLength > 0 && dataLength > 0)
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, fileLength, MemoryMappedFileAccess.Read);
        }
        return new SafeTensorsFile(path, dataStart, tensors, metadata, map, view);
    }

    /// <summary>The header's tensors and metadata, validated as the format's reference implementation (the
    /// <c>safetensors</c> crate) does: strict UTF-8 JSON without duplicate names; every tensor a known dtype, a shape
    /// and <c>[begin, end]</c> whose length fits them; sorted by offset, the tensors tile the data exactly, from 0
    /// to the end of the file (no gap, no overlap, nothing after the last one).</summary>
    static (Dictionary<string, TensorInfo>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        var root = JsonFile.ParseObject(header, path, "tensor names mapping to dtype, shape and data_offsets");
        var tensors = new Dictionary<string, TensorInfo>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, value) in root)
        {
            if (name == "__metadata__")
            {
                if (value is null) continue;
                if (value is not JsonObject meta) throw JsonFile.Expected(path, "__metadata__", "an object of strings", value);
                foreach (var (key, _) in meta)
                    metadata[key] = JsonFile.String(meta, key, $"{path}: __metadata__") ?? throw JsonFile.Expected($"{path}: __metadata__", key, "a string", null);
                continue;
            }
            string where = $"{path}: tensor \"{name}\"";
            if (value is not JsonObject entry) throw JsonFile.Expected(path, name, "a tensor entry {dtype, shape, data_offsets}", value);
            string dtype = JsonFile.String(entry, "dtype", where) ?? throw new MolaException($"{where}: missing \"dtype\"");
            if (!DTypes.TryGetValue(dtype, out var info))
                throw new MolaException($"{where}: unknown dtype \"{dtype}\" (supported: {string.Join(", ", DTypes.Keys)})");
            var shape = Longs(entry, "shape", where, null);
            var offsets = Longs(entry, "data_offsets", where, 2);
            long begin = offsets[0], end = offsets[1];
            if (end < begin)
                throw new MolaException($"{where}: data offsets [{begin}, {end}] are not a valid range");
            if (end > dataLength)
                throw new MolaException($"{where}: data offsets [{begin}, {end}] run past the end of the data ({dataLength} bytes): the file is truncated or its header is wrong");
            long expected;
            try { expected = checked(shape.Aggregate(1L, (x, y) => x * y) * info.Size); }
            catch (OverflowException) { throw new MolaException($"{where}: shape {FormatShape(shape)} is too large to be stored"); }
            if (end - begin != expected)
                throw new MolaException($"{where}: data offsets [{begin}, {end}] hold {end - begin} bytes but {dtype} {FormatShape(shape)} needs {expected}");
            tensors[name] = new TensorInfo(name, dtype, shape, begin, end);
        }
        var sorted = tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].Begin < sorted[i - 1].End)
                throw new MolaException($"{path}: tensors \"{sorted[i - 1].Name}\" [{sorted[i - 1].Begin}, {sorted[i - 1].End}] and \"{sorted[i].Name}\" [{sorted[i].Begin}, {sorted[i].End}] have overlapping data offsets");
        long at = 0;
        foreach (var t in sorted)
        {
            if (t.Begin > at)
                throw new MolaException($"{path}: {t.Begin - at} bytes at data offset {at} belong to no tensor (before \"{t.Name}\" [{t.Begin}, {t.End}]); the format stores tensors without gaps");
            at = t.End;
        }
        if (at != dataLength)
            throw new MolaException($"{path}: {dataLength - at} bytes after the last tensor (the tensors end at data offset {at} of {dataLength}); the format forbids trailing data");
        return (tensors, metadata);
    }

    /// <summary>A list of non-negative integers (of <paramref name="count"/> entries when given).</summary>
    static long[] Longs(JsonObject entry, string key, string where, int? count)
    {
        string expected = count == 2 ? "[begin, end] of non-negative integers" : "a list of non-negative integers";
        if (entry[key] is not JsonArray a || (count is int c && a.Count != c))
            throw entry[key] is null && !entry.ContainsKey(key) ? new MolaException($"{where}: missing \"{key}\" ({expected})") : JsonFile.Expected(where, key, expected, entry[key]);
        return a.Select(x => x is JsonValue v && v.TryGetValue<long>(out long n) && n >= 0 ? n : throw JsonFile.Expected(where, key, expected, a)).ToArray();
    }

    public static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";

    public bool Contains(string name) => Tensors.ContainsKey(name);

    /// <summary>Materialises one tensor, converted to <paramref name="dtype"/> (default: as stored) on <paramref name="device"/>.</summary>
    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null)
    {
        if (!Tensors.TryGetValue(name, out var info)) throw new MolaException($"{Path}: tensor \"{name}\" not found");
        var stored = DTypes[info.DType].Type;
        var t = torch.empty(info.Shape, stored);
        long n = info.End - info.Begin;
        if (n > 0)
        {
            unsafe
            {
                byte* ptr = null;
                _view!.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
                try
                {
                    CopyInto(t, ptr + _view.PointerOffset + _dataStart + info.Begin, n);
                }
                finally { _view.SafeMemoryMappedViewHandle.ReleasePointer(); }
            }
        }
        if ((dtype is null || dtype == stored) && (device is null || device.type == DeviceType.CPU)) return t;
        using (t) return t.to(dtype ?? stored, device ?? CPU);
    }

    /// <summary>Copies tensor <paramref name="name"/> into <paramref name="destination"/> (converted to its dtype
    /// and device) after checking the shape, then refuses NaN or infinite weights (<paramref name="checkFinite"/>
    /// off only to measure what the check costs); <paramref name="needs"/> ends the shape error ("expected", "this
    /// model needs").</summary>
    public void ReadInto(string name, Tensor destination, string needs = "expected", bool checkFinite = true) =>
        Load(name, destination, needs, checkFinite, share: false);

    /// <summary>As <see cref="ReadInto"/>, but where the file holds the tensor in the destination's dtype and the
    /// destination is on the CPU, <paramref name="destination"/> is made to use the mapped file's pages
    /// (<see cref="Map"/>) instead of receiving a copy: for frozen weights, which are then held once.</summary>
    public void ShareInto(string name, Tensor destination, string needs = "expected") =>
        Load(name, destination, needs, checkFinite: true, share: true);

    void Load(string name, Tensor destination, string needs, bool checkFinite, bool share)
    {
        var info = Tensors[name];
        CheckFits(Path, info, destination, needs);
        using var _ = torch.no_grad();
        if (checkFinite) RequireFinite(name);
        if (share && destination.device.type == DeviceType.CPU && DTypes[info.DType].Type == destination.dtype && Map(name) is { } mapped)
        {
            using (mapped) destination.set_(mapped);
            return;
        }
        using var t = Read(name, destination.dtype, destination.device);
        destination.copy_(t);
        // A narrowing conversion can overflow (BF16 or F32 above 65504 read as float16, F32 near its largest value
        // rounded to BF16): check what it made. Widening (BF16 to float32, the usual load) cannot.
        if (checkFinite && Narrows(info.DType, destination.dtype)) RequireFinite(destination, Path, name);
    }

    /// <summary>The stored tensor has the destination's shape, and a floating-point destination gets floating-point values.</summary>
    internal static void CheckFits(string path, TensorInfo info, Tensor destination, string needs)
    {
        if (!info.Shape.SequenceEqual(destination.shape))
            throw new MolaException($"{path}: tensor \"{info.Name}\" has shape {FormatShape(info.Shape)}, {needs} {FormatShape(destination.shape)}");
        // Integers would convert silently into weights that mean nothing.
        if (destination.is_floating_point() && info.DType is not ("F64" or "F32" or "F16" or "BF16"))
            throw new MolaException($"{path}: tensor \"{info.Name}\" is stored as {info.DType}; weights must be F32, F16, BF16 or F64");
    }

    internal static bool Narrows(string stored, ScalarType to) => (stored, to) switch
    {
        (_, ScalarType.Float64) => false,
        ("F16" or "BF16", ScalarType.Float32) => false,
        ("F16", ScalarType.Float16) or ("BF16", ScalarType.BFloat16) => false,
        _ => true,
    };

    /// <summary>Refuses a tensor with NaN or infinite values (a damaged file, one saved from a run that diverged,
    /// or values past what the dtype holds).</summary>
    public static void RequireFinite(Tensor t, string path, string name)
    {
        using var finite = torch.isfinite(t).all();
        if (!finite.item<bool>()) throw NotFinite(path, name);
    }

    static MolaException NotFinite(string path, string name) =>
        new($"{path}: tensor \"{name}\" holds NaN or infinite values (a damaged file, a run that diverged, or values past what the dtype holds)");

    /// <summary>Refuses a stored floating-point tensor with NaN or infinite values, by a scan of its mapped bytes
    /// (a value is NaN or infinite exactly when its exponent bits are all ones): one vectorised pass at memory speed,
    /// with no tensor allocated (bench/NOTES.md has the cost).</summary>
    public void RequireFinite(string name)
    {
        var info = Tensors[name];
        long n = info.End - info.Begin;
        if (n == 0) return;
        unsafe
        {
            byte* ptr = null;
            _view!.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
            try
            {
                byte* p = ptr + _view.PointerOffset + _dataStart + info.Begin;
                bool finite = info.DType switch
                {
                    "BF16" => AllFinite<ushort>(p, n, 0x7F80),
                    "F16" => AllFinite<ushort>(p, n, 0x7C00),
                    "F32" => AllFinite<uint>(p, n, 0x7F80_0000),
                    "F64" => AllFinite<ulong>(p, n, 0x7FF0_0000_0000_0000),
                    _ => true,
                };
                if (!finite) throw NotFinite(Path, name);
            }
            finally { _view.SafeMemoryMappedViewHandle.ReleasePointer(); }
        }
    }

    static unsafe bool AllFinite<T>(byte* start, long bytes, T exponent) where T : unmanaged, System.Numerics.IBinaryInteger<T>
    {
        var mask = new System.Numerics.Vector<T>(exponent);
        long count = bytes / sizeof(T);
        for (long done = 0; done < count;)
        {
            int block = (int)Math.Min(count - done, 1 << 28);   // a Span holds at most 2^31 - 1 elements
            var values = new ReadOnlySpan<T>((T*)start + done, block);
            int i = 0;
            for (; i <= block - System.Numerics.Vector<T>.Count; i += System.Numerics.Vector<T>.Count)
                if (System.Numerics.Vector.EqualsAny(new System.Numerics.Vector<T>(values[i..]) & mask, mask)) return false;
            for (; i < block; i++)
                if ((values[i] & exponent) == exponent) return false;
            done += block;
        }
        return true;
    }

    // A Span holds at most 2^31 bytes: larger tensors (a float32 Gemma embedding is 3 GB) are filled
    // a block of rows at a time through narrow() views.
    internal static long MaxSpanBytes = 1L << 30;

    static unsafe void CopyInto(Tensor dst, byte* src, long n)
    {
        if (n <= MaxSpanBytes || dst.dim() == 0 || dst.shape[0] <= 1)
        {
            new ReadOnlySpan<byte>(src, checked((int)n)).CopyTo(dst.bytes);
            return;
        }
        long rows = dst.shape[0], rowBytes = n / rows, block = Math.Max(1, MaxSpanBytes / rowBytes);
        for (long r = 0; r < rows; r += block)
        {
            long count = Math.Min(block, rows - r);
            using var view = dst.narrow(0, r, count);
            CopyInto(view, src + r * rowBytes, count * rowBytes);
        }
    }

    // One tensor per stored dtype over the whole file, mapped by libtorch itself (see Map).
    readonly Dictionary<ScalarType, Tensor> _mapped = new();

    /// <summary>
    /// Tensor <paramref name="name"/> over the file's own pages, with no copy: libtorch maps the file privately
    /// (copy-on-write), so the weights are the page cache's pages, a model loaded this way holds its weights once
    /// (a copy would sit in anonymous memory beside the mapped file while it loads) and a second load from a warm page
    /// cache reads nothing. Writing into the tensor (merging LoRA into a base weight) copies just the pages it touches
    /// and never changes the file. The tensor keeps the mapping alive after this file is disposed. Null when the
    /// stored bytes do not start at a multiple of the element size (a header not padded as writers do), or on a
    /// platform libtorch cannot map on: the caller then copies.
    /// </summary>
    public Tensor? Map(string name)
    {
        if (!Tensors.TryGetValue(name, out var info)) throw new MolaException($"{Path}: tensor \"{name}\" not found");
        var (type, size) = DTypes[info.DType];
        long start = _dataStart + info.Begin;
        if (start % size != 0 || info.End == info.Begin) return null;
        if (!_mapped.TryGetValue(type, out var whole))
        {
            // The tensors tile the data to the end of the file (checked on open), so their end is the file's length:
            // the length of what the path leads to, which for a symbolic link (a Hugging Face cache) is not its own.
            long fileLength = _dataStart + Tensors.Values.Max(t => t.End);
            _mapped[type] = whole = torch.from_file(Path, shared: false, size: fileLength / size, dtype: type);
        }
        using var flat = whole.narrow(0, start / size, (info.End - info.Begin) / size);
        return flat.view(info.Shape);
    }

    public void Dispose()
    {
        foreach (var t in _mapped.Values) t.Dispose();   // tensors made by Map keep their storage
        _mapped.Clear();
        _view?.Dispose();
        _map?.Dispose();
    }

    /// <summary>Writes tensors (in name order) to <paramref name="path"/> atomically: a temporary file, then a rename.</summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var (name, t) in list)
        {
            string dtype = DTypes.First(kv => kv.Value.Type == t.dtype).Key;
            long size = t.numel() * DTypes[dtype].Size;
            header[name] = new { dtype, shape = t.shape, data_offsets = new[] { offset, offset + size } };
            offset += size;
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        int pad = (8 - json.Length % 8) % 8;
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            fs.Write(BitConverter.GetBytes((ulong)(json.Length + pad)));
            fs.Write(json);
            for (int i = 0; i < pad; i++) fs.WriteByte((byte)' ');
            foreach (var (_, t) in list)
            {
                using var c = t.detach().cpu().contiguous();
                var bytes = c.bytes;
                fs.Write(bytes);
            }
        }
        File.Move(tmp, path, overwrite: true);
    }
}
