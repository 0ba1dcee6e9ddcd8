using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>
/// A <c>pytorch_model.bin</c> as <c>torch.save</c> writes it since PyTorch 1.6: an uncompressed zip holding
/// <c>ARCHIVE/data.pkl</c> (the state dict, read by <see cref="TorchPickle"/>) and one entry <c>ARCHIVE/data/KEY</c>
/// per storage. Storages are memory-mapped, never copied whole; a tensor is a view of its storage with its own offset
/// and strides (several tensors may share one storage), materialised only when read.
/// </summary>
public sealed class TorchBinFile : ITensorFile
{
    readonly Dictionary<string, TorchTensor> _tensors;
    readonly Dictionary<string, long> _storageStart;   // byte offset in the file of each storage, by key
    readonly Dictionary<ScalarType, Tensor> _mapped = new();
    readonly long _fileLength;

    public string Path { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    TorchBinFile(string path, long fileLength, Dictionary<string, TorchTensor> tensors, Dictionary<string, long> storageStart)
    {
        Path = path;
        _fileLength = fileLength;
        _tensors = tensors;
        _storageStart = storageStart;
        Tensors = tensors.ToDictionary(kv => kv.Key, kv =>
        {
            var (t, size) = (kv.Value, ElementSize(kv.Value.Storage.Type));
            long begin = storageStart[t.Storage.Key] + t.Offset * size;
            return new TensorInfo(kv.Key, TorchPickle.Storages[t.Storage.TypeName].DType, t.Shape, begin, begin + t.Shape.Aggregate(1L, (a, b) => a * b) * size);
        });
    }

    public static TorchBinFile Open(string path)
    {
        if (!File.Exists(path)) throw new MolaException($"{path}: not found");
        using var fs = InputFile.OpenRead(path);
        var handle = fs.SafeFileHandle;
        long length = fs.Length;
        Span<byte> magic = stackalloc byte[4];
        if (length < 4 || RandomAccess.Read(handle, magic, 0) < 4 || BinaryPrimitives.ReadUInt32LittleEndian(magic) != 0x04034b50)
        {
            if (length >= 2 && magic[0] == 0x80)
                throw new MolaException($"{path}: a torch checkpoint in the legacy format (before PyTorch 1.6, not a zip), which is not read; " +
                    "save it again with a newer PyTorch (torch.save writes the zip format) or convert it to safetensors");
            throw new MolaException($"{path}: not a torch checkpoint (expected the zip archive torch.save writes)");
        }
        var entries = ZipEntries(handle, length, path);
        var pkl = entries.Keys.Where(n => n.EndsWith("/data.pkl", StringComparison.Ordinal) && n.IndexOf('/') == n.Length - 9).ToList();
        if (pkl.Count != 1) throw new MolaException($"{path}: expected one ARCHIVE/data.pkl entry in the zip, found {pkl.Count}");
        string prefix = pkl[0][..^"data.pkl".Length];
        if (entries.TryGetValue(prefix + "byteorder", out var bo) && Encoding.ASCII.GetString(ReadEntry(handle, bo)).Trim() != "little")
            throw new MolaException($"{path}: saved on a big-endian machine; only little-endian checkpoints are read");
        var stateDict = TorchPickle.ReadStateDict(ReadEntry(handle, entries[pkl[0]]), $"{path}: {pkl[0]}");

        var tensors = new Dictionary<string, TorchTensor>();
        var starts = new Dictionary<string, long>();
        foreach (var (name, t) in stateDict)
        {
            string where = $"{path}: tensor \"{name}\"";
            if (!tensors.TryAdd(name, t)) throw new MolaException($"{where} appears twice");
            string entry = prefix + "data/" + t.Storage.Key;
            if (!entries.TryGetValue(entry, out var e)) throw new MolaException($"{where}: its storage {entry} is not in the archive");
            long size = ElementSize(t.Storage.Type);
            if (e.Length != t.Storage.Count * size)
                throw new MolaException($"{where}: storage {entry} holds {e.Length} bytes, but {t.Storage.Count} elements of {t.Storage.TypeName} need {t.Storage.Count * size}");
            CheckView(t, where);
            starts[t.Storage.Key] = e.Start;
        }
        return new TorchBinFile(path, length, tensors, starts);
    }

    /// <summary>The view lies inside its storage: offset and strides non-negative, the last element reached before its end.</summary>
    static void CheckView(TorchTensor t, string where)
    {
        if (t.Offset < 0 || t.Shape.Any(s => s < 0) || t.Strides.Any(s => s < 0))
            throw new MolaException($"{where}: negative offset, size or stride");
        if (t.Shape.Any(s => s == 0)) return;
        long last;
        try { last = checked(t.Offset + t.Shape.Zip(t.Strides).Sum(d => (d.First - 1) * d.Second)); }
        catch (OverflowException) { throw new MolaException($"{where}: size and strides overflow"); }
        if (last >= t.Storage.Count)
            throw new MolaException($"{where}: size {SafeTensorsFile.FormatShape(t.Shape)}, strides {SafeTensorsFile.FormatShape(t.Strides)} " +
                $"and offset {t.Offset} reach element {last}, past its storage of {t.Storage.Count}");
    }

    static long ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    sealed record ZipEntry(long Start, long Length);

    /// <summary>The archive's entries (name to data range), from the central directory, Zip64 included (shards over 4 GB).
    /// torch.save stores entries uncompressed; a compressed one is refused.</summary>
    static Dictionary<string, ZipEntry> ZipEntries(SafeFileHandle h, long length, string path)
    {
        MolaException Bad(string what) => new($"{path}: {what} (a damaged or truncated torch checkpoint)");
        // The end-of-central-directory record: 22 bytes and a comment of at most 65535 bytes, at the end.
        int tail = (int)Math.Min(length, 22 + 65535);
        var end = new byte[tail];
        RandomAccess.Read(h, end, length - tail);
        int eocd = -1;
        for (int k = tail - 22; k >= 0; k--)
            if (BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(k)) == 0x06054b50) { eocd = k; break; }
        if (eocd < 0) throw Bad("no zip end-of-central-directory record");
        long count = BinaryPrimitives.ReadUInt16LittleEndian(end.AsSpan(eocd + 10));
        long cdSize = BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(eocd + 12));
        long cdStart = BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(eocd + 16));
        if (count == 0xFFFF || cdSize == 0xFFFFFFFF || cdStart == 0xFFFFFFFF)
        {
            // Zip64: a locator (20 bytes) just before the record points at the Zip64 end record.
            if (eocd < 20 || BinaryPrimitives.ReadUInt32LittleEndian(end.AsSpan(eocd - 20)) != 0x07064b50) throw Bad("no Zip64 locator");
            long rec = (long)BinaryPrimitives.ReadUInt64LittleEndian(end.AsSpan(eocd - 12));
            var z = Read(h, rec, 56, length, Bad);
            if (BinaryPrimitives.ReadUInt32LittleEndian(z) != 0x06064b50) throw Bad("no Zip64 end record");
            count = (long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(32));
            cdSize = (long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(40));
            cdStart = (long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(48));
        }
        if (cdSize > 1 << 28) throw Bad("central directory too large");
        var cd = Read(h, cdStart, (int)cdSize, length, Bad);
        var entries = new Dictionary<string, ZipEntry>();
        int at = 0;
        for (long n = 0; n < count; n++)
        {
            if (at + 46 > cd.Length || BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(at)) != 0x02014b50) throw Bad("bad central directory entry");
            int method = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(at + 10));
            long csize = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(at + 20));
            long usize = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(at + 24));
            int nameLen = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(at + 28));
            int extraLen = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(at + 30));
            int commentLen = BinaryPrimitives.ReadUInt16LittleEndian(cd.AsSpan(at + 32));
            long local = BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(at + 42));
            if (at + 46 + nameLen + extraLen > cd.Length) throw Bad("bad central directory entry");
            string name = Encoding.UTF8.GetString(cd, at + 46, nameLen);
            // The Zip64 extra field holds, in this order, those of the sizes and offset that are 0xFFFFFFFF.
            var extra = cd.AsSpan(at + 46 + nameLen, extraLen);
            while (extra.Length >= 4)
            {
                int id = BinaryPrimitives.ReadUInt16LittleEndian(extra), len = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
                if (4 + len > extra.Length) break;
                if (id == 1)
                {
                    var f = extra.Slice(4, len).ToArray();
                    int used = 0;
                    long Next() { if (used + 8 > f.Length) throw Bad("bad Zip64 field"); used += 8; return (long)BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(used - 8)); }
                    if (usize == 0xFFFFFFFF) usize = Next();
                    if (csize == 0xFFFFFFFF) csize = Next();
                    if (local == 0xFFFFFFFF) local = Next();
                }
                extra = extra[(4 + len)..];
            }
            at += 46 + nameLen + extraLen + commentLen;
            if (method != 0) throw new MolaException($"{path}: zip entry {name} is compressed; torch.save stores entries uncompressed");
            var lh = Read(h, local, 30, length, Bad);
            if (BinaryPrimitives.ReadUInt32LittleEndian(lh) != 0x04034b50) throw Bad($"bad local header of {name}");
            long start = local + 30 + BinaryPrimitives.ReadUInt16LittleEndian(lh.AsSpan(26)) + BinaryPrimitives.ReadUInt16LittleEndian(lh.AsSpan(28));
            if (start + usize > length || usize != csize) throw Bad($"entry {name} runs past the end of the file");
            entries[name] = new ZipEntry(start, usize);
        }
        return entries;
    }

    static byte[] Read(SafeFileHandle h, long offset, int count, long length, Func<string, MolaException> bad)
    {
        if (offset < 0 || offset + count > length) throw bad("an offset past the end of the file");
        var buf = new byte[count];
        if (RandomAccess.Read(h, buf, offset) != count) throw bad("short read");
        return buf;
    }

    static byte[] ReadEntry(SafeFileHandle h, ZipEntry e) =>
        e.Length > 1 << 30 ? throw new MolaException("data.pkl too large") : Read(h, e.Start, (int)e.Length, long.MaxValue, w => new MolaException(w));

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>Tensor <paramref name="name"/> as a view of its storage over the file's pages (mapped privately, as
    /// <see cref="SafeTensorsFile.Map"/> does); where the storage does not start at a multiple of its element size,
    /// a copy of the storage.</summary>
    Tensor View(string name)
    {
        if (!_tensors.TryGetValue(name, out var t)) throw new MolaException($"{Path}: tensor \"{name}\" not found");
        var type = t.Storage.Type;
        long size = ElementSize(type), start = _storageStart[t.Storage.Key];
        if (t.Storage.Count > 0 && start % size == 0)
        {
            if (!_mapped.TryGetValue(type, out var whole))
                _mapped[type] = whole = torch.from_file(Path, shared: false, size: _fileLength / size, dtype: type);
            // as_strided counts its offset from the start of the underlying storage: here, the whole file.
            return whole.as_strided(t.Shape, t.Strides, start / size + t.Offset);
        }
        using var storage = torch.empty(t.Storage.Count, type);
        if (t.Storage.Count > 0)
        {
            using var fs = InputFile.OpenRead(Path);
            fs.Position = start;
            fs.ReadExactly(storage.bytes);   // a storage of an unaligned hand-made zip: small in practice
        }
        return storage.as_strided(t.Shape, t.Strides, t.Offset);
    }

    public Tensor Read(string name, ScalarType? dtype = null, Device? device = null)
    {
        using var view = View(name);
        return view.to(dtype ?? view.dtype, device ?? CPU, copy: true).contiguous();
    }

    public void ShareInto(string name, Tensor destination, string needs = "expected")
    {
        var info = Tensors[name];
        SafeTensorsFile.CheckFits(Path, info, destination, needs);
        using var _ = torch.no_grad();
        using var view = View(name);
        SafeTensorsFile.RequireFinite(view, Path, name);
        if (destination.device.type == DeviceType.CPU && view.dtype == destination.dtype && view.is_contiguous())
        {
            destination.set_(view);
            return;
        }
        destination.copy_(view);
        if (SafeTensorsFile.Narrows(info.DType, destination.dtype)) SafeTensorsFile.RequireFinite(destination, Path, name);
    }

    public void Dispose()
    {
        foreach (var t in _mapped.Values) t.Dispose();   // views handed out keep their storage
        _mapped.Clear();
    }
}
