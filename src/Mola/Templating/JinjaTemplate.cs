using System.Globalization;
using System.Text;

namespace Mola.Templating;

/// <summary>
/// A strict interpreter of the Jinja2 subset that model chat templates are written in (see <see cref="JinjaParser"/>),
/// rendering as Hugging Face's <c>apply_chat_template</c> does with Python's Jinja2. Values are strings, integers
/// (long), floats (double), booleans, null (None), lists and string-keyed dictionaries. What Jinja would do
/// quietly but a chat prompt should not (adding to an undefined value, printing a list, comparing a string with a
/// number) is an error naming the line.
/// </summary>
public sealed class JinjaTemplate
{
    readonly List<Node> _nodes;

    JinjaTemplate(List<Node> nodes) => _nodes = nodes;

    /// <summary>Parses <paramref name="source"/>; throws <see cref="TemplateException"/> for anything outside the subset.</summary>
    public static JinjaTemplate Parse(string source) => new(JinjaParser.Parse(source));

    /// <summary>The text for <paramref name="variables"/>; <c>raise_exception</c> and evaluation errors throw
    /// <see cref="TemplateException"/>.</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables)
    {
        var output = new StringBuilder();
        var scopes = new List<Dictionary<string, object?>> { new(variables) };
        Run(_nodes, scopes, output);
        return output.ToString();
    }

    /// <summary>A name with no value: prints as nothing, is false, and fails in any other use (Jinja's default).</summary>
    sealed record Undefined(string What);

    static TemplateException Error(int line, string message) => new($"line {line}: {message}");

    static void Run(List<Node> nodes, List<Dictionary<string, object?>> scopes, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            switch (node)
            {
                case TextNode t:
                    output.Append(t.Text);
                    break;
                case OutputNode o:
                    output.Append(Str(Eval(o.Value, scopes), o.Value.Line));
                    break;
                case SetNode s:
                    scopes[^1][s.Variable] = Eval(s.Value, scopes);
                    break;
                case IfNode i:
                    var branch = i.Branches.FirstOrDefault(b => Truthy(Eval(b.Test, scopes))).Body ?? i.Else;
                    if (branch is not null) Run(branch, scopes, output);
                    break;
                case ForNode f:
                    RunFor(f, scopes, output);
                    break;
            }
        }
    }

    static void RunFor(ForNode f, List<Dictionary<string, object?>> scopes, StringBuilder output)
    {
        var items = Eval(f.Iterable, scopes) switch
        {
            List<object?> list => list,
            string s => s.Select(c => (object?)c.ToString()).ToList(),
            Dictionary<string, object?> d => d.Keys.Select(k => (object?)k).ToList(),
            var v => throw Error(f.Line, $"for {f.Variable} in ...: cannot loop over {TypeName(v)}"),
        };
        // The loop body is its own scope: a set inside it does not leak out, as in Jinja.
        var scope = new Dictionary<string, object?>();
        scopes.Add(scope);
        for (int i = 0; i < items.Count; i++)
        {
            scope[f.Variable] = items[i];
            scope["loop"] = new Dictionary<string, object?>
            {
                ["index0"] = (long)i,
                ["index"] = (long)i + 1,
                ["revindex0"] = (long)(items.Count - 1 - i),
                ["revindex"] = (long)(items.Count - i),
                ["first"] = i == 0,
                ["last"] = i == items.Count - 1,
                ["length"] = (long)items.Count,
                ["previtem"] = i > 0 ? items[i - 1] : new Undefined("loop.previtem"),
                ["nextitem"] = i + 1 < items.Count ? items[i + 1] : new Undefined("loop.nextitem"),
            };
            Run(f.Body, scopes, output);
        }
        scopes.RemoveAt(scopes.Count - 1);
    }

    static object? Eval(Expr e, List<Dictionary<string, object?>> scopes)
    {
        switch (e)
        {
            case Literal l: return l.Value;
            case ListLiteral l: return l.Items.Select(i => Eval(i, scopes)).ToList();
            case Name n:
                for (int i = scopes.Count - 1; i >= 0; i--)
                    if (scopes[i].TryGetValue(n.Id, out var v)) return v;
                return new Undefined(n.Id);
            case GetAttr a: return Item(Eval(a.Target, scopes), a.Attr, Describe(a), a.Line);
            case GetItem g: return Item(Eval(g.Target, scopes), Eval(g.Key, scopes), Describe(g), g.Line);
            case Slice s: return SliceOf(Eval(s.Target, scopes), s.Start is null ? null : Eval(s.Start, scopes), s.Stop is null ? null : Eval(s.Stop, scopes), s.Line);
            case Unary u:
                {
                    var v = Eval(u.Operand, scopes);
                    if (u.Op == "not") return !Truthy(v);
                    return Number(v, u.Op, u.Line) switch
                    {
                        long x => u.Op == "-" ? -x : x,
                        var x => u.Op == "-" ? -(double)x : x,
                    };
                }
            case Binary { Op: "and" } b:
                {
                    var left = Eval(b.Left, scopes);
                    return Truthy(left) ? Eval(b.Right, scopes) : left;
                }
            case Binary { Op: "or" } b:
                {
                    var left = Eval(b.Left, scopes);
                    return Truthy(left) ? left : Eval(b.Right, scopes);
                }
            case Binary b: return Apply(b.Op, Eval(b.Left, scopes), Eval(b.Right, scopes), b.Line);
            case Conditional c:
                return Truthy(Eval(c.Test, scopes)) ? Eval(c.Then, scopes)
                    : c.Else is null ? new Undefined("the else of a conditional expression") : Eval(c.Else, scopes);
            case Filter f:
                {
                    var v = Eval(f.Target, scopes);
                    return f.Id switch
                    {
                        "trim" => Str(v, f.Line).Trim(),
                        _ => v switch
                        {
                            string s => (long)s.EnumerateRunes().Count(),   // Python's len: code points
                            List<object?> l => (long)l.Count,
                            Dictionary<string, object?> d => (long)d.Count,
                            _ => throw Error(f.Line, $"|length of {TypeName(v)}"),
                        },
                    };
                }
            case Test t:
                {
                    var v = Eval(t.Target, scopes);
                    bool result = t.Id switch
                    {
                        "defined" => v is not Undefined,
                        "undefined" => v is Undefined,
                        "none" => v is null,
                        "string" => v is string,
                        _ => v is long or double,   // number; Python's bool is an int, but Jinja's "number" test says no
                    };
                    return result != t.Negated;
                }
            case MethodCall m: return CallMethod(m, Eval(m.Target, scopes), m.Args.Select(a => Eval(a, scopes)).ToArray());
            case RaiseException r: throw new TemplateException(Str(Eval(r.Message, scopes), r.Line));
            default: throw new InvalidOperationException(e.GetType().Name);
        }
    }

    static string Describe(Expr e) => e switch
    {
        Name n => n.Id,
        GetAttr a => $"{Describe(a.Target)}.{a.Attr}",
        GetItem { Key: Literal { Value: string k } } g => $"{Describe(g.Target)}['{k}']",
        GetItem { Key: Literal { Value: long k } } g => $"{Describe(g.Target)}[{k}]",
        GetItem g => $"{Describe(g.Target)}[...]",
        _ => "a value",
    };

    static object? Item(object? target, object? key, string what, int line)
    {
        switch (target)
        {
            case Undefined u: throw Error(line, $"{what}: {u.What} is undefined");
            case Dictionary<string, object?> d when key is string k:
                return d.TryGetValue(k, out var v) ? v : new Undefined(what);
            case List<object?> l when key is long or bool:
                {
                    long i = Convert.ToInt64(key, CultureInfo.InvariantCulture);
                    if (i < 0) i += l.Count;
                    return i >= 0 && i < l.Count ? l[(int)i] : new Undefined(what);
                }
            case string s when key is long or bool:
                {
                    long i = Convert.ToInt64(key, CultureInfo.InvariantCulture);
                    if (i < 0) i += s.Length;
                    return i >= 0 && i < s.Length ? s[(int)i].ToString() : new Undefined(what);
                }
            default:
                // Jinja answers undefined for an attribute a value lacks; only a missing key or index is worth that.
                if (key is string && target is string or long or double or bool or List<object?> or null) return new Undefined(what);
                throw Error(line, $"{what}: cannot index {TypeName(target)} with {TypeName(key)}");
        }
    }

    static object SliceOf(object? target, object? start, object? stop, int line)
    {
        int length = target switch
        {
            List<object?> l => l.Count,
            string s => s.Length,
            _ => throw Error(line, $"cannot slice {TypeName(target)}"),
        };
        int Bound(object? b, int otherwise)
        {
            if (b is null) return otherwise;
            if (b is not (long or bool)) throw Error(line, $"a slice bound must be an integer, got {TypeName(b)}");
            long i = Convert.ToInt64(b, CultureInfo.InvariantCulture);
            if (i < 0) i += length;
            return (int)Math.Clamp(i, 0, length);
        }
        int from = Bound(start, 0), to = Math.Max(from, Bound(stop, length));
        return target is string str ? str[from..to] : ((List<object?>)target).GetRange(from, to - from);
    }

    static object? CallMethod(MethodCall m, object? target, object?[] args)
    {
        if (target is not string s) throw Error(m.Line, $".{m.Method}() needs a string, got {TypeName(target)}");
        int arity = m.Method is "startswith" or "endswith" ? 1 : m.Method is "strip" or "lstrip" or "rstrip" ? -1 : 0;
        if (arity == 0 && args.Length > 0 || arity == 1 && args.Length != 1 || arity == -1 && args.Length > 1)
            throw Error(m.Line, $".{m.Method}() given {args.Length} arguments");
        string Arg(int i) => args[i] as string ?? throw Error(m.Line, $".{m.Method}() needs a string argument, got {TypeName(args[i])}");
        char[]? chars = args.Length == 1 && arity == -1 && args[0] is not null ? Arg(0).ToCharArray() : null;
        return m.Method switch
        {
            "strip" => chars is null ? s.Trim() : s.Trim(chars),
            "lstrip" => chars is null ? s.TrimStart() : s.TrimStart(chars),
            "rstrip" => chars is null ? s.TrimEnd() : s.TrimEnd(chars),
            "upper" => s.ToUpperInvariant(),
            "lower" => s.ToLowerInvariant(),
            "startswith" => s.StartsWith(Arg(0), StringComparison.Ordinal),
            _ => s.EndsWith(Arg(0), StringComparison.Ordinal),
        };
    }

    static object? Apply(string op, object? a, object? b, int line)
    {
        if (op == "~") return Str(a, line) + Str(b, line);
        if (op is "==" or "!=") return Equal(a, b) == (op == "==");
        if (a is Undefined ua) throw Error(line, $"\"{op}\" on {ua.What}, which is undefined");
        if (b is Undefined ub) throw Error(line, $"\"{op}\" on {ub.What}, which is undefined");
        switch (op)
        {
            case "in":
                return b switch
                {
                    string s when a is string sub => s.Contains(sub, StringComparison.Ordinal),
                    List<object?> l => l.Any(x => Equal(a, x)),
                    Dictionary<string, object?> d => a is string k && d.ContainsKey(k),
                    _ => throw Error(line, $"\"in\" between {TypeName(a)} and {TypeName(b)}"),
                };
            case "<" or ">" or "<=" or ">=":
                {
                    int c = a is string sa && b is string sb ? string.CompareOrdinal(sa, sb)
                        : IsNumber(a) && IsNumber(b) ? ToDouble(a).CompareTo(ToDouble(b))
                        : throw Error(line, $"\"{op}\" between {TypeName(a)} and {TypeName(b)}");
                    return op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
                }
            case "+" when a is string sa && b is string sb: return sa + sb;
            case "+" when a is List<object?> la && b is List<object?> lb: return la.Concat(lb).ToList();
            case "*" when a is string sa && b is long or bool: return string.Concat(Enumerable.Repeat(sa, (int)Math.Max(0, ToLong(b))));
        }
        var x = Number(a, op, line);
        var y = Number(b, op, line);
        if (op == "/")
        {
            if (ToDouble(y) == 0) throw Error(line, "division by zero");
            return ToDouble(x) / ToDouble(y);
        }
        if (x is long i && y is long j)
        {
            if (op is "//" or "%" && j == 0) throw Error(line, "division by zero");
            return op switch
            {
                "+" => i + j,
                "-" => i - j,
                "*" => i * j,
                "//" => (long)Math.Floor((double)i / j),
                _ => ((i % j) + j) % j,   // Python's modulo takes the divisor's sign
            };
        }
        double p = ToDouble(x), q = ToDouble(y);
        if (op is "//" or "%" && q == 0) throw Error(line, "division by zero");
        return op switch
        {
            "+" => p + q,
            "-" => p - q,
            "*" => p * q,
            "//" => Math.Floor(p / q),
            _ => p - q * Math.Floor(p / q),
        };
    }

    static bool IsNumber(object? v) => v is long or double or bool;
    static long ToLong(object? v) => v is bool b ? (b ? 1 : 0) : (long)v!;
    static double ToDouble(object? v) => v is double d ? d : ToLong(v);

    /// <summary>A number for arithmetic (Python's bool counts as 0 or 1); anything else is an error.</summary>
    static object Number(object? v, string op, int line) => v switch
    {
        long or double => v,
        bool b => b ? 1L : 0L,
        Undefined u => throw Error(line, $"\"{op}\" on {u.What}, which is undefined"),
        _ => throw Error(line, $"\"{op}\" on {TypeName(v)}"),
    };

    /// <summary>Python's ==: numbers (booleans among them) by value, strings by characters, lists item by item.</summary>
    static bool Equal(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b)) return ToDouble(a) == ToDouble(b);
        return (a, b) switch
        {
            (null, null) => true,
            (string x, string y) => x == y,
            (Undefined, Undefined) => true,
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => Equal(p.First, p.Second)),
            (Dictionary<string, object?> x, Dictionary<string, object?> y) =>
                x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out var v) && Equal(kv.Value, v)),
            _ => false,
        };
    }

    static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long i => i != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        Dictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str() of a value that a template prints; containers are refused (their repr is no prompt text).</summary>
    static string Str(object? v, int line) => v switch
    {
        string s => s,
        Undefined => "",
        null => "None",
        bool b => b ? "True" : "False",
        long i => i.ToString(CultureInfo.InvariantCulture),
        double d => PythonFloat(d),
        _ => throw Error(line, $"printing {TypeName(v)} is outside the supported Jinja subset"),
    };

    static string PythonFloat(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        return r.Contains('.') || r.Contains('E') ? r.Replace("E+", "e+").Replace("E-", "e-") : r + ".0";
    }

    static string TypeName(object? v) => v switch
    {
        null => "none",
        string => "a string",
        bool => "a boolean",
        long => "an integer",
        double => "a float",
        List<object?> => "a list",
        Dictionary<string, object?> => "a dict",
        Undefined u => $"{u.What} (undefined)",
        _ => v.GetType().Name,
    };
}
