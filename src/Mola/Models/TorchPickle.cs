using System.Buffers.Binary;
using System.Text;
using static TorchSharp.torch;

namespace Mola.Models;

/// <summary>Where a tensor's storage lies: the archive entry <c>data/Key</c> of <see cref="Count"/> elements.</summary>
public sealed record TorchStorage(string Key, ScalarType Type, string TypeName, long Count);

/// <summary>A tensor as <c>torch._utils._rebuild_tensor_v2</c> describes it: a view of a storage.</summary>
public sealed record TorchTensor(TorchStorage Storage, long Offset, long[] Shape, long[] Strides);

/// <summary>
/// A safe reader of the pickle <c>torch.save</c> writes for a state dict (<c>data.pkl</c>): a small stack machine
/// with only the opcodes that pickle protocol 2 emits for dicts, tuples, numbers, strings and tensors, and with
/// imports allowed only from a fixed list (an ordered dict, the tensor rebuilder, the storage types). Nothing is
/// ever called or constructed beyond those: a pickle that imports anything else (<c>os.system</c>, a class of
/// its own) is refused when it names it, before it could run.
/// </summary>
public static class TorchPickle
{
    const string OrderedDict = "collections.OrderedDict", RebuildTensor = "torch._utils._rebuild_tensor_v2";

    /// <summary>The storage types of the dtypes a checkpoint holds (the safetensors names of <see cref="TensorInfo"/>).</summary>
    internal static readonly Dictionary<string, (ScalarType Type, string DType)> Storages = new()
    {
        ["torch.FloatStorage"] = (ScalarType.Float32, "F32"),
        ["torch.DoubleStorage"] = (ScalarType.Float64, "F64"),
        ["torch.HalfStorage"] = (ScalarType.Float16, "F16"),
        ["torch.BFloat16Storage"] = (ScalarType.BFloat16, "BF16"),
        ["torch.LongStorage"] = (ScalarType.Int64, "I64"),
        ["torch.IntStorage"] = (ScalarType.Int32, "I32"),
        ["torch.ShortStorage"] = (ScalarType.Int16, "I16"),
        ["torch.CharStorage"] = (ScalarType.Int8, "I8"),
        ["torch.ByteStorage"] = (ScalarType.Byte, "U8"),
        ["torch.BoolStorage"] = (ScalarType.Bool, "BOOL"),
    };

    sealed record Global(string Name);
    sealed class Mark;
    sealed class Dict
    {
        public readonly List<KeyValuePair<object?, object?>> Items = new();
    }

    /// <summary>The tensors of a state dict pickle, by name in file order; <paramref name="where"/> names the file in errors.</summary>
    public static List<KeyValuePair<string, TorchTensor>> ReadStateDict(byte[] pickle, string where)
    {
        var root = Run(pickle, where);
        if (root is not Dict dict)
            throw new MolaException($"{where}: holds a {Describe(root)}, not a state dict (a dict of tensor names to tensors)");
        var result = new List<KeyValuePair<string, TorchTensor>>();
        foreach (var (key, value) in dict.Items)
        {
            if (key is not string name) throw new MolaException($"{where}: a state dict key is a {Describe(key)}, expected a tensor name");
            if (value is not TorchTensor t)
                throw new MolaException($"{where}: entry \"{name}\" is a {Describe(value)}, not a tensor (only flat state dicts of tensors are read)");
            result.Add(new(name, t));
        }
        return result;
    }

    static string Describe(object? v) => v switch
    {
        null => "None",
        string => "string",
        long or System.Numerics.BigInteger => "integer",
        double => "float",
        bool => "bool",
        object?[] => "tuple",
        List<object?> => "list",
        Dict => "dict",
        TorchTensor => "tensor",
        _ => v.GetType().Name,
    };

    static object? Run(byte[] p, string where)
    {
        var stack = new List<object?>();
        var memo = new Dictionary<long, object?>();
        int i = 0;
        MolaException Bad(string what) => new($"{where}: {what} at byte {i} of the pickle");
        ReadOnlySpan<byte> Take(int n)
        {
            if (n < 0 || i + n > p.Length) throw Bad("truncated pickle");
            var s = p.AsSpan(i, n);
            i += n;
            return s;
        }
        object? Pop()
        {
            if (stack.Count == 0 || stack[^1] is Mark) throw Bad("malformed pickle (stack underflow)");
            var v = stack[^1];
            stack.RemoveAt(stack.Count - 1);
            return v;
        }
        List<object?> PopMark()
        {
            int m = stack.FindLastIndex(x => x is Mark);
            if (m < 0) throw Bad("malformed pickle (no mark)");
            var items = stack.GetRange(m + 1, stack.Count - m - 1);
            stack.RemoveRange(m, stack.Count - m);
            return items;
        }
        object? Top() => stack.Count > 0 ? stack[^1] : throw Bad("malformed pickle (stack underflow)");
        Global Import(string module, string name)
        {
            string full = module + "." + name;
            if (full != OrderedDict && full != RebuildTensor && !Storages.ContainsKey(full))
                throw new MolaException($"{where}: the pickle imports {full}, which is not read: only tensors and the standard containers " +
                    $"are ({OrderedDict}, {RebuildTensor}, torch.*Storage); this file is not a plain state dict, or is unsafe");
            return new Global(full);
        }
        string Line()
        {
            int end = Array.IndexOf(p, (byte)'\n', i);
            if (end < 0) throw Bad("truncated pickle");
            string s = Encoding.UTF8.GetString(p, i, end - i);
            i = end + 1;
            return s;
        }
        void SetItems(object? target, List<object?> kv)
        {
            if (target is not Dict d || kv.Count % 2 != 0) throw Bad("malformed pickle (SETITEMS on a non-dict)");
            for (int k = 0; k < kv.Count; k += 2) d.Items.Add(new(kv[k], kv[k + 1]));
        }

        while (true)
        {
            if (i >= p.Length) throw Bad("truncated pickle (no STOP)");
            byte op = p[i++];
            switch (op)
            {
                case 0x80: Take(1); break;                                          // PROTO
                case 0x95: Take(8); break;                                          // FRAME
                case (byte)'.': return stack.Count == 1 ? stack[0] : throw Bad("malformed pickle (STOP with a stack of " + stack.Count + ")");
                case (byte)'(': stack.Add(new Mark()); break;
                case (byte)'}': stack.Add(new Dict()); break;
                case (byte)']': stack.Add(new List<object?>()); break;
                case (byte)')': stack.Add(Array.Empty<object?>()); break;
                case (byte)'N': stack.Add(null); break;
                case 0x88: stack.Add(true); break;                                  // NEWTRUE
                case 0x89: stack.Add(false); break;                                 // NEWFALSE
                case (byte)'K': stack.Add((long)Take(1)[0]); break;                 // BININT1
                case (byte)'M': stack.Add((long)BinaryPrimitives.ReadUInt16LittleEndian(Take(2))); break;
                case (byte)'J': stack.Add((long)BinaryPrimitives.ReadInt32LittleEndian(Take(4))); break;
                case 0x8a:                                                          // LONG1
                    {
                        var bytes = Take(Take(1)[0]);
                        if (bytes.Length > 8) throw Bad("integer too large");
                        long v = 0;
                        for (int b = bytes.Length - 1; b >= 0; b--) v = (v << 8) | bytes[b];
                        if (bytes.Length is > 0 and < 8 && (bytes[^1] & 0x80) != 0) v -= 1L << (8 * bytes.Length);
                        stack.Add(v);
                        break;
                    }
                case (byte)'G': stack.Add(BinaryPrimitives.ReadDoubleBigEndian(Take(8))); break;  // BINFLOAT
                case (byte)'X': stack.Add(Encoding.UTF8.GetString(Take(checked((int)BinaryPrimitives.ReadUInt32LittleEndian(Take(4)))))); break;
                case 0x8c: stack.Add(Encoding.UTF8.GetString(Take(Take(1)[0]))); break;   // SHORT_BINUNICODE
                case (byte)'q': memo[Take(1)[0]] = Top(); break;                    // BINPUT
                case (byte)'r': memo[BinaryPrimitives.ReadUInt32LittleEndian(Take(4))] = Top(); break;
                case 0x94: memo[memo.Count] = Top(); break;                         // MEMOIZE
                case (byte)'h': stack.Add(memo.TryGetValue(Take(1)[0], out var g1) ? g1 : throw Bad("malformed pickle (unknown memo)")); break;
                case (byte)'j': stack.Add(memo.TryGetValue(BinaryPrimitives.ReadUInt32LittleEndian(Take(4)), out var g4) ? g4 : throw Bad("malformed pickle (unknown memo)")); break;
                case (byte)'t': stack.Add(PopMark().ToArray()); break;              // TUPLE
                case 0x85: stack.Add(new[] { Pop() }); break;                       // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); stack.Add(new[] { a, b }); break; }
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); stack.Add(new[] { a, b, c }); break; }
                case (byte)'a': { var v = Pop(); (Top() as List<object?> ?? throw Bad("malformed pickle (APPEND on a non-list)")).Add(v); break; }
                case (byte)'e': { var vs = PopMark(); (Top() as List<object?> ?? throw Bad("malformed pickle (APPENDS on a non-list)")).AddRange(vs); break; }
                case (byte)'s': { var v = Pop(); var k = Pop(); SetItems(Top(), [k, v]); break; }
                case (byte)'u': { var kv = PopMark(); SetItems(Top(), kv); break; }
                case (byte)'c': { string module = Line(); stack.Add(Import(module, Line())); break; }  // GLOBAL
                case 0x93: { var name = Pop(); var module = Pop(); stack.Add(module is string m && name is string n ? Import(m, n) : throw Bad("malformed pickle (STACK_GLOBAL)")); break; }
                case (byte)'Q': stack.Add(Storage(Pop(), where)); break;            // BINPERSID
                case (byte)'R':                                                     // REDUCE
                    {
                        var args = Pop() as object?[] ?? throw Bad("malformed pickle (REDUCE without a tuple)");
                        var f = Pop() as Global ?? throw Bad("malformed pickle (REDUCE on a non-callable)");
                        stack.Add(f.Name switch
                        {
                            OrderedDict when args.Length == 0 => new Dict(),
                            RebuildTensor => Tensor(args, where),
                            _ => throw new MolaException($"{where}: the pickle calls {f.Name} with {args.Length} arguments, which is not a tensor or dict"),
                        });
                        break;
                    }
                case (byte)'b':                                                     // BUILD: a state dict's _metadata, ignored
                    {
                        Pop();
                        if (Top() is not Dict) throw Bad("malformed pickle (BUILD on a non-dict)");
                        break;
                    }
                default:
                    throw Bad($"pickle opcode 0x{op:x2} ('{(char)op}'), which torch.save does not write for a state dict,");
            }
        }
    }

    // ('storage', torch.FloatStorage, key, location, numel)
    static TorchStorage Storage(object? pid, string where)
    {
        if (pid is not object?[] { Length: 5 } t || t[0] is not "storage" || t[1] is not Global type || t[2] is not string key || t[4] is not long count || count < 0)
            throw new MolaException($"{where}: a persistent id that is not a torch storage ('storage', type, key, location, size)");
        if (!Storages.TryGetValue(type.Name, out var st))
            throw new MolaException($"{where}: storage type {type.Name} is not a tensor storage");
        return new TorchStorage(key, st.Type, type.Name, count);
    }

    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    static TorchTensor Tensor(object?[] a, string where)
    {
        if (a.Length < 4 || a[0] is not TorchStorage s || a[1] is not long offset || Longs(a[2]) is not { } shape || Longs(a[3]) is not { } strides || shape.Length != strides.Length)
            throw new MolaException($"{where}: a tensor whose arguments are not (storage, offset, size, stride)");
        return new TorchTensor(s, offset, shape, strides);
    }

    static long[]? Longs(object? v) => v is object?[] t && t.All(x => x is long) ? t.Select(x => (long)x!).ToArray() : null;
}
