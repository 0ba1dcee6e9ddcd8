namespace Mola.Data;

/// <summary>
/// One instruction-tuning example in the Alpaca shape: <c>instruction</c>, optional <c>input</c>
/// (context; missing or null reads as empty), <c>output</c> (the response to learn), and for
/// benchmarks an optional <c>answer</c> (the gold label, e.g. <c>B</c>).
/// </summary>
public sealed record InstructionRecord(string Instruction, string Input, string Output, string? Answer = null)
{
    /// <summary>The line of its file the record starts on (1-based); 0 when it was not read from a file.</summary>
    public int Line { get; init; }

    /// <summary>Records of a JSON Lines file or a JSON array file; other fields are ignored.</summary>
    public static List<InstructionRecord> Load(string path)
    {
        var records = Jsonl.ReadObjects(path).Select(r => new InstructionRecord(
            Jsonl.RequireString(r.Obj, "instruction", path, r.Line),
            Jsonl.OptionalString(r.Obj, "input", path, r.Line) ?? "",
            Jsonl.RequireString(r.Obj, "output", path, r.Line),
            Jsonl.OptionalString(r.Obj, "answer", path, r.Line))
        { Line = r.Line }).ToList();
        if (records.Count == 0)
            throw new MolaException($"{path}: no records (expected JSON Lines or a JSON array of objects with \"instruction\", \"input\" and \"output\")");
        return records;
    }
}
