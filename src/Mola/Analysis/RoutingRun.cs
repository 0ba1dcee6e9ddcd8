using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Mola.Analysis;

/// <summary>Routing statistics of an adapter over a data set: every text is run through the adapted
/// model with the MoLA layers' routing hook on.</summary>
public static class RoutingRun
{
    /// <summary>Texts of a JSONL/JSON file: <c>{"text": ...}</c> objects, or instruction records
    /// (prompt and output through <paramref name="template"/>).</summary>
    public static List<string> ReadTexts(string path, PromptTemplate template)
    {
        var texts = new List<string>();
        foreach (var (line, obj) in Jsonl.ReadObjects(path))
        {
            if (obj.ContainsKey("text")) texts.Add(Jsonl.RequireString(obj, "text", path, line));
            else if (obj.ContainsKey("instruction"))
            {
                var r = new InstructionRecord(Jsonl.RequireString(obj, "instruction", path, line), Jsonl.OptionalString(obj, "input", path, line) ?? "",
                    Jsonl.OptionalString(obj, "output", path, line) ?? "");
                texts.Add(template.Full(r));
            }
            else throw new MolaException($"{path}:{line}: expected a \"text\" field or an instruction record");
        }
        if (texts.Count == 0) throw new MolaException($"{path}: no records");
        return texts;
    }

    /// <summary>Runs each text (BOS + tokens, one at a time so no padding token is ever counted).</summary>
    public static RoutingStatistics Collect(AdapterModel adapter, MolaTokenizer tok, IReadOnlyList<string> texts, Action<int>? progress = null)
    {
        if (adapter.Config.Kind != AdapterKind.Mola) throw new MolaException("routing statistics need a MoLA adapter (plain LoRA has no router)");
        var stats = new RoutingStatistics();
        int maxLen = adapter.Base.Config.MaxPositionEmbeddings;
        adapter.eval();
        adapter.SetRoutingObserver(stats);
        try
        {
            using var _ = no_grad();
            for (int i = 0; i < texts.Count; i++)
            {
                var ids = tok.Encode(texts[i], bos: true);
                if (ids.Count > maxLen) ids.RemoveRange(maxLen, ids.Count - maxLen);
                using var scope = NewDisposeScope();
                adapter.Base.Forward(tensor(ids.Select(x => (long)x).ToArray(), [1, ids.Count], device: adapter.Base.Device));
                progress?.Invoke(i + 1);
            }
        }
        finally
        {
            adapter.SetRoutingObserver(null);
        }
        return stats;
    }
}
