using System.Globalization;
using System.Text;

namespace Mola.Templating;

/// <summary>A template that is not in the supported subset, or that fails while rendering; the message names the
/// line and the construct.</summary>
public sealed class TemplateException(string message) : Exception(message);

abstract record Expr(int Line);
sealed record Literal(object? Value, int Line) : Expr(Line);
sealed record ListLiteral(Expr[] Items, int Line) : Expr(Line);
sealed record Name(string Id, int Line) : Expr(Line);
sealed record GetAttr(Expr Target, string Attr, int Line) : Expr(Line);
sealed record GetItem(Expr Target, Expr Key, int Line) : Expr(Line);
sealed record Slice(Expr Target, Expr? Start, Expr? Stop, int Line) : Expr(Line);
sealed record Unary(string Op, Expr Operand, int Line) : Expr(Line);
sealed record Binary(string Op, Expr Left, Expr Right, int Line) : Expr(Line);
sealed record Conditional(Expr Test, Expr Then, Expr? Else, int Line) : Expr(Line);
sealed record Filter(Expr Target, string Id, int Line) : Expr(Line);
sealed record Test(Expr Target, string Id, bool Negated, int Line) : Expr(Line);
sealed record MethodCall(Expr Target, string Method, Expr[] Args, int Line) : Expr(Line);
sealed record RaiseException(Expr Message, int Line) : Expr(Line);

abstract record Node;
sealed record TextNode(string Text) : Node;
sealed record OutputNode(Expr Value) : Node;
sealed record IfNode(List<(Expr Test, List<Node> Body)> Branches, List<Node>? Else) : Node;
sealed record ForNode(string Variable, Expr Iterable, List<Node> Body, int Line) : Node;
sealed record SetNode(string Variable, Expr Value) : Node;

/// <summary>
/// Parses the Jinja2 subset that model chat templates use, with Hugging Face's settings (<c>trim_blocks</c>,
/// <c>lstrip_blocks</c>): text, <c>{{ }}</c>, <c>{# #}</c>, <c>for</c>/<c>if</c>/<c>elif</c>/<c>else</c>/<c>set</c>,
/// whitespace control with <c>-</c>, and expressions of literals, names, attributes, indexing, slicing, arithmetic,
/// <c>~</c>, comparisons, <c>and</c>/<c>or</c>/<c>not</c>, <c>x if c else y</c>, the filters, tests and string methods
/// in <see cref="Filters"/>, <see cref="Tests"/>, <see cref="Methods"/>, and <c>raise_exception(...)</c>.
/// Anything else is refused here, before any request is rendered, naming the construct and its line.
/// </summary>
static class JinjaParser
{
    public static readonly string[] Filters = ["trim", "length"];
    public static readonly string[] Tests = ["defined", "undefined", "none", "string", "number"];
    public static readonly string[] Methods = ["strip", "lstrip", "rstrip", "upper", "lower", "startswith", "endswith"];

    enum Kind { Text, Output, Block }
    sealed record Segment(Kind Kind, string Content, int Line);

    public static List<Node> Parse(string source)
    {
        var segments = Split(source);
        int at = 0;
        var body = ParseBody(segments, ref at, [], out var end);
        if (end is not null) throw Error(end.Line, $"{{% {end.Content} %}} without a matching opening tag");
        return body;
    }

    static TemplateException Error(int line, string message) => new($"line {line}: {message}");

    static string Quote(string s) => s.Length > 40 ? s[..40] + "..." : s;

    /// <summary>Text and tags, with whitespace control applied as Jinja's lexer does (HF: trim_blocks, lstrip_blocks).</summary>
    static List<Segment> Split(string s)
    {
        var segments = new List<Segment>();
        int pos = 0, line = 1;
        bool lineStarting = true, stripNext = false;
        while (pos <= s.Length)
        {
            int open = NextOpener(s, pos);
            string text = s[pos..(open < 0 ? s.Length : open)];
            if (stripNext) text = text.TrimStart();
            if (open < 0)
            {
                if (text.Length > 0) segments.Add(new Segment(Kind.Text, text, line));
                break;
            }
            char type = s[open + 1];
            char sign = open + 2 < s.Length ? s[open + 2] : ' ';
            bool isBlock = type != '{';
            if (sign == '-') text = text.TrimEnd();
            else if (sign != '+' && isBlock)
            {
                // lstrip_blocks: a block tag alone on its line takes the line's leading whitespace with it.
                int lineStart = text.LastIndexOf('\n') + 1;
                if ((lineStart > 0 || lineStarting) && text.AsSpan(lineStart).IsWhiteSpace()) text = text[..lineStart];
            }
            if (text.Length > 0) segments.Add(new Segment(Kind.Text, text, line));
            line += Count(s, pos, open);
            int inner = open + 2 + (sign is '-' or '+' ? 1 : 0);
            string closer = type switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int close = type == '#' ? s.IndexOf(closer, inner, StringComparison.Ordinal) : FindCloser(s, inner, closer, line);
            if (close < 0) throw Error(line, $"\"{s[open..(open + 2)]}\" is never closed with \"{closer}\"");
            bool stripAfter = s[close - 1] == '-' && close - 1 >= inner;
            string content = s[inner..(stripAfter ? close - 1 : close)].Trim();
            if (type == '{') segments.Add(new Segment(Kind.Output, content, line));
            else if (type == '%') segments.Add(new Segment(Kind.Block, content, line));
            line += Count(s, open, close);
            pos = close + 2;
            stripNext = stripAfter;
            lineStarting = false;
            // trim_blocks: the first newline after a block tag or comment is dropped.
            if (isBlock && !stripAfter && pos < s.Length && s[pos] == '\n')
            {
                pos++;
                line++;
                lineStarting = true;
            }
            if (pos == s.Length) break;
        }
        return segments;
    }

    static int Count(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to; i++) if (s[i] == '\n') n++;
        return n;
    }

    static int NextOpener(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>The closing delimiter, skipping string literals (a "%}" inside quotes does not end the tag).</summary>
    static int FindCloser(string s, int from, string closer, int line)
    {
        for (int i = from; i + 1 < s.Length; i++)
        {
            char c = s[i];
            if (c is '\'' or '"')
            {
                int j = i + 1;
                while (j < s.Length && s[j] != c) j += s[j] == '\\' ? 2 : 1;
                if (j >= s.Length) throw Error(line, "a string literal is never closed");
                i = j;
            }
            else if (c == closer[0] && s[i + 1] == closer[1]) return i;
        }
        return -1;
    }

    /// <summary>Nodes up to one of <paramref name="ends"/> (returned in <paramref name="end"/>) or the end of the template.</summary>
    static List<Node> ParseBody(List<Segment> segments, ref int at, string[] ends, out Segment? end)
    {
        var nodes = new List<Node>();
        end = null;
        while (at < segments.Count)
        {
            var seg = segments[at++];
            switch (seg.Kind)
            {
                case Kind.Text:
                    nodes.Add(new TextNode(seg.Content));
                    break;
                case Kind.Output:
                    {
                        var lexer = new ExprParser(seg.Content, seg.Line);
                        nodes.Add(new OutputNode(lexer.ParseWhole()));
                        break;
                    }
                default:
                    string keyword = FirstWord(seg.Content);
                    if (ends.Contains(keyword))
                    {
                        end = seg;
                        return nodes;
                    }
                    nodes.Add(ParseStatement(seg, keyword, segments, ref at));
                    break;
            }
        }
        if (ends.Length > 0) throw Error(segments.Count > 0 ? segments[^1].Line : 1, $"the template ends before {{% {ends[^1]} %}}");
        return nodes;
    }

    static string FirstWord(string content)
    {
        int i = 0;
        while (i < content.Length && (char.IsLetterOrDigit(content[i]) || content[i] == '_')) i++;
        return content[..i];
    }

    static Node ParseStatement(Segment seg, string keyword, List<Segment> segments, ref int at)
    {
        var p = new ExprParser(seg.Content[keyword.Length..], seg.Line);
        switch (keyword)
        {
            case "if":
                {
                    var branches = new List<(Expr, List<Node>)>();
                    List<Node>? otherwise = null;
                    var test = p.ParseWhole();
                    while (true)
                    {
                        var body = ParseBody(segments, ref at, ["elif", "else", "endif"], out var end);
                        branches.Add((test, body));
                        string endWord = FirstWord(end!.Content);
                        if (endWord == "elif")
                        {
                            test = new ExprParser(end.Content[4..], end.Line).ParseWhole();
                            continue;
                        }
                        if (endWord == "else")
                        {
                            RequireBare(end, "else");
                            otherwise = ParseBody(segments, ref at, ["endif"], out end);
                        }
                        RequireBare(end!, "endif");
                        return new IfNode(branches, otherwise);
                    }
                }
            case "for":
                {
                    string variable = p.ExpectName();
                    if (p.Peek(",")) throw Error(seg.Line, "for with several loop variables (for a, b in ...) is outside the supported Jinja subset");
                    p.ExpectKeyword("in");
                    var iterable = p.ParseWithoutConditional();
                    if (p.PeekKeyword("if")) throw Error(seg.Line, "a filtered for (for x in xs if ...) is outside the supported Jinja subset");
                    if (p.PeekKeyword("recursive")) throw Error(seg.Line, "a recursive for is outside the supported Jinja subset");
                    p.ExpectEnd();
                    var body = ParseBody(segments, ref at, ["else", "endfor"], out var end);
                    if (FirstWord(end!.Content) == "else") throw Error(end.Line, "{% for %} ... {% else %} is outside the supported Jinja subset");
                    RequireBare(end, "endfor");
                    return new ForNode(variable, iterable, body, seg.Line);
                }
            case "set":
                {
                    string variable = p.ExpectName();
                    if (p.Peek(".") || p.Peek(",")) throw Error(seg.Line, $"{{% set {variable}{p.PeekText()} ... %}} (setting an attribute or several names) is outside the supported Jinja subset");
                    if (!p.Peek("=")) throw Error(seg.Line, $"a block {{% set {variable} %}} ... {{% endset %}} is outside the supported Jinja subset");
                    p.Expect("=");
                    return new SetNode(variable, p.ParseWhole());
                }
            case "endif" or "endfor" or "elif" or "else":
                throw Error(seg.Line, $"{{% {keyword} %}} without a matching opening tag");
            default:
                string what = keyword.Length == 0 ? seg.Content : keyword;
                throw Error(seg.Line, $"{{% {Quote(what)} %}} is outside the supported Jinja subset (supported: for, if, elif, else, set)");
        }
    }

    static void RequireBare(Segment seg, string keyword)
    {
        if (seg.Content.Trim() != keyword) throw Error(seg.Line, $"{{% {keyword} %}} takes nothing after it, got \"{Quote(seg.Content)}\"");
    }

    /// <summary>A recursive-descent parser of one tag's expression, with Jinja's precedence.</summary>
    sealed class ExprParser
    {
        readonly List<(string Text, char Kind)> _tokens = [];   // Kind: n(ame) s(tring) i(nt) f(loat) o(perator)
        readonly int _line;
        int _at;

        static readonly string[] Operators = ["//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", ".", ",", ":", "|", "="];

        public ExprParser(string source, int line)
        {
            _line = line;
            int i = 0;
            while (i < source.Length)
            {
                char c = source[i];
                if (char.IsWhiteSpace(c)) { if (c == '\n') line++; i++; continue; }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < source.Length && (char.IsLetterOrDigit(source[j]) || source[j] == '_')) j++;
                    _tokens.Add((source[i..j], 'n'));
                    i = j;
                }
                else if (char.IsAsciiDigit(c))
                {
                    int j = i;
                    while (j < source.Length && (char.IsAsciiDigit(source[j]) || source[j] == '_')) j++;
                    bool isFloat = j + 1 < source.Length && source[j] == '.' && char.IsAsciiDigit(source[j + 1]);
                    if (isFloat) for (j++; j < source.Length && char.IsAsciiDigit(source[j]); j++) { }
                    _tokens.Add((source[i..j].Replace("_", ""), isFloat ? 'f' : 'i'));
                    i = j;
                }
                else if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int j = i + 1;
                    for (; j < source.Length && source[j] != c; j++)
                    {
                        if (source[j] != '\\' || j + 1 >= source.Length) { sb.Append(source[j]); continue; }
                        char e = source[++j];
                        switch (e)
                        {
                            case 'n': sb.Append('\n'); break;
                            case 't': sb.Append('\t'); break;
                            case 'r': sb.Append('\r'); break;
                            case '\\' or '\'' or '"': sb.Append(e); break;
                            case 'u' when j + 4 < source.Length && int.TryParse(source.AsSpan(j + 1, 4), NumberStyles.HexNumber, null, out int code):
                                sb.Append((char)code);
                                j += 4;
                                break;
                            default: sb.Append('\\').Append(e); break;   // Python keeps an unknown escape as written
                        }
                    }
                    if (j >= source.Length) throw Error(_line, "a string literal is never closed");
                    _tokens.Add((sb.ToString(), 's'));
                    i = j + 1;
                }
                else
                {
                    string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(source, i, o, 0, o.Length) == 0);
                    if (c == '{') throw Error(_line, "\"{\": dict literals are outside the supported Jinja subset");
                    if (op is null || (op == "*" && i + 1 < source.Length && source[i + 1] == '*'))
                        throw Error(_line, $"\"{(op is null ? c.ToString() : "**")}\" is outside the supported Jinja subset");
                    _tokens.Add((op, 'o'));
                    i += op.Length;
                }
            }
        }

        bool AtEnd => _at >= _tokens.Count;
        public bool Peek(string op) => !AtEnd && _tokens[_at].Kind == 'o' && _tokens[_at].Text == op;
        public bool PeekKeyword(string word) => !AtEnd && _tokens[_at].Kind == 'n' && _tokens[_at].Text == word;
        public string PeekText() => AtEnd ? "" : _tokens[_at].Text;
        bool Accept(string op) { if (!Peek(op)) return false; _at++; return true; }
        bool AcceptKeyword(string word) { if (!PeekKeyword(word)) return false; _at++; return true; }

        public void Expect(string op)
        {
            if (!Accept(op)) throw Error(_line, $"expected \"{op}\", got {Describe()}");
        }

        public void ExpectKeyword(string word)
        {
            if (!AcceptKeyword(word)) throw Error(_line, $"expected \"{word}\", got {Describe()}");
        }

        public string ExpectName()
        {
            if (AtEnd || _tokens[_at].Kind != 'n') throw Error(_line, $"expected a name, got {Describe()}");
            return _tokens[_at++].Text;
        }

        public void ExpectEnd()
        {
            if (!AtEnd) throw Error(_line, $"unexpected {Describe()}");
        }

        string Describe() => AtEnd ? "the end of the tag" : $"\"{_tokens[_at].Text}\"";

        public Expr ParseWhole()
        {
            if (AtEnd) throw Error(_line, "expected an expression, got the end of the tag");
            var e = ParseExpression();
            ExpectEnd();
            return e;
        }

        public Expr ParseWithoutConditional() => ParseOr();

        Expr ParseExpression()
        {
            var e = ParseOr();
            while (AcceptKeyword("if"))
            {
                var test = ParseOr();
                Expr? otherwise = AcceptKeyword("else") ? ParseExpression() : null;
                e = new Conditional(test, e, otherwise, _line);
            }
            return e;
        }

        Expr ParseOr()
        {
            var e = ParseAnd();
            while (AcceptKeyword("or")) e = new Binary("or", e, ParseAnd(), _line);
            return e;
        }

        Expr ParseAnd()
        {
            var e = ParseNot();
            while (AcceptKeyword("and")) e = new Binary("and", e, ParseNot(), _line);
            return e;
        }

        Expr ParseNot() => AcceptKeyword("not") ? new Unary("not", ParseNot(), _line) : ParseCompare();

        static readonly string[] Comparisons = ["==", "!=", "<", ">", "<=", ">="];

        Expr ParseCompare()
        {
            var e = ParseMath1();
            while (true)
            {
                string? op = Comparisons.FirstOrDefault(Peek);
                if (op is not null) { _at++; e = new Binary(op, e, ParseMath1(), _line); }
                else if (AcceptKeyword("in")) e = new Binary("in", e, ParseMath1(), _line);
                else if (PeekKeyword("not") && _at + 1 < _tokens.Count && _tokens[_at + 1] == ("in", 'n'))
                {
                    _at += 2;
                    e = new Unary("not", new Binary("in", e, ParseMath1(), _line), _line);
                }
                else return e;
            }
        }

        Expr ParseMath1()
        {
            var e = ParseConcat();
            while (Peek("+") || Peek("-")) e = new Binary(_tokens[_at++].Text, e, ParseConcat(), _line);
            return e;
        }

        Expr ParseConcat()
        {
            var e = ParseMath2();
            while (Accept("~")) e = new Binary("~", e, ParseMath2(), _line);
            return e;
        }

        Expr ParseMath2()
        {
            var e = ParseUnary(withFilter: true);
            while (Peek("*") || Peek("/") || Peek("//") || Peek("%")) e = new Binary(_tokens[_at++].Text, e, ParseUnary(withFilter: true), _line);
            return e;
        }

        Expr ParseUnary(bool withFilter)
        {
            Expr e;
            if (Peek("-") || Peek("+")) e = new Unary(_tokens[_at++].Text, ParseUnary(withFilter: false), _line);
            else e = ParsePostfix(ParsePrimary());
            return withFilter ? ParseFilters(e) : e;
        }

        Expr ParsePrimary()
        {
            if (AtEnd) throw Error(_line, "expected a value, got the end of the tag");
            var (text, kind) = _tokens[_at++];
            switch (kind)
            {
                case 's':
                    // Adjacent string literals join, as in Python.
                    while (!AtEnd && _tokens[_at].Kind == 's') text += _tokens[_at++].Text;
                    return new Literal(text, _line);
                case 'i':
                    if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long n)) throw Error(_line, $"integer {text} is too large");
                    return new Literal(n, _line);
                case 'f': return new Literal(double.Parse(text, CultureInfo.InvariantCulture), _line);
                case 'n':
                    switch (text)
                    {
                        case "true" or "True": return new Literal(true, _line);
                        case "false" or "False": return new Literal(false, _line);
                        case "none" or "None": return new Literal(null, _line);
                    }
                    if (Peek("("))
                    {
                        if (text != "raise_exception")
                            throw Error(_line, $"function {text}(...) is outside the supported Jinja subset (supported: raise_exception)");
                        _at++;
                        var message = ParseExpression();
                        Expect(")");
                        return new RaiseException(message, _line);
                    }
                    return new Name(text, _line);
                default:
                    if (text == "(")
                    {
                        var inner = ParseExpression();
                        if (Peek(",")) throw Error(_line, "tuples are outside the supported Jinja subset");
                        Expect(")");
                        return inner;
                    }
                    if (text == "[")
                    {
                        var items = new List<Expr>();
                        while (!Accept("]"))
                        {
                            if (items.Count > 0) Expect(",");
                            if (Accept("]")) break;
                            items.Add(ParseExpression());
                        }
                        return new ListLiteral([.. items], _line);
                    }
                    throw Error(_line, $"unexpected \"{text}\"");
            }
        }

        Expr ParsePostfix(Expr e)
        {
            while (true)
            {
                if (Accept("."))
                {
                    string attr = ExpectName();
                    if (Accept("(")) e = ParseMethod(e, attr);
                    else e = new GetAttr(e, attr, _line);
                }
                else if (Accept("["))
                {
                    Expr? start = Peek(":") ? null : ParseExpression();
                    if (Accept(":"))
                    {
                        Expr? stop = Peek("]") || Peek(":") ? null : ParseExpression();
                        if (Peek(":")) throw Error(_line, "a slice with a step ([a:b:c]) is outside the supported Jinja subset");
                        e = new Slice(e, start, stop, _line);
                    }
                    else e = new GetItem(e, start!, _line);
                    Expect("]");
                }
                else if (Peek("(")) throw Error(_line, "calling a value is outside the supported Jinja subset (supported: raise_exception and the string methods)");
                else return e;
            }
        }

        Expr ParseMethod(Expr target, string method)
        {
            if (!Methods.Contains(method))
                throw Error(_line, $"method .{method}() is outside the supported Jinja subset (supported: {string.Join(", ", Methods.Select(m => "." + m + "()"))})");
            var args = new List<Expr>();
            while (!Accept(")"))
            {
                if (args.Count > 0) Expect(",");
                args.Add(ParseExpression());
            }
            return new MethodCall(target, method, [.. args], _line);
        }

        Expr ParseFilters(Expr e)
        {
            while (true)
            {
                if (Accept("|"))
                {
                    string name = ExpectName();
                    if (!Filters.Contains(name))
                        throw Error(_line, $"filter |{name} is outside the supported Jinja subset (supported: {string.Join(", ", Filters.Select(f => "|" + f))})");
                    if (Peek("(")) throw Error(_line, $"filter |{name} with arguments is outside the supported Jinja subset");
                    e = new Filter(e, name, _line);
                }
                else if (AcceptKeyword("is"))
                {
                    bool negated = AcceptKeyword("not");
                    string name = ExpectName();
                    if (name is "none" or "None") name = "none";
                    if (!Tests.Contains(name))
                        throw Error(_line, $"test \"is {name}\" is outside the supported Jinja subset (supported: {string.Join(", ", Tests)})");
                    e = new Test(e, name, negated, _line);
                }
                else return e;
            }
        }
    }
}
