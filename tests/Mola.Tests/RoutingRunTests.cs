using Mola.Adapters;
using Mola.Analysis;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

public class RoutingRunTests
{
    [Fact]
    public void CountsOverADataSetSumToTokensTimesTopKInEveryModule()
    {
        using var model = ModelLoader.Load(TestUtil.Fixture("llama-tiny"));
        var adapter = AdapterModel.Load(model, TestUtil.Fixture("llama-tiny-mola"));
        var tok = MolaTokenizer.Load(TestUtil.Fixture("llama-tiny"));
        string data = Path.Combine(TestUtil.TempDir(), "texts.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"the cell energy of a plant\"}", "{\"instruction\": \"Name a rock.\", \"output\": \"soil\"}"]);
        var texts = RoutingRun.ReadTexts(data, PromptTemplate.Alpaca);
        Assert.Equal(PromptTemplate.Alpaca.Full(new InstructionRecord("Name a rock.", "", "soil")), texts[1]);
        long tokens = texts.Sum(t => tok.Encode(t, bos: true).Count);

        var stats = RoutingRun.Collect(adapter, tok, texts);
        var rows = stats.Rows();
        Assert.Equal(3 * 7 * 0 + 7 * (2 + 4 + 8), rows.Count);   // one row per expert of every module
        foreach (var g in rows.GroupBy(r => (r.Layer, r.Module)))
        {
            int topK = adapter.Config.TopK[g.Key.Layer];
            Assert.Equal(tokens * topK, g.Sum(r => r.Selections));
            Assert.All(g, r => Assert.Equal(tokens, r.Tokens));
            Assert.Equal(topK, g.Sum(r => r.Frequency), 9);
        }
        // top-1 layers give every selection the whole weight
        Assert.All(rows.Where(r => r.Layer == 0 && r.Selections > 0), r => Assert.Equal(1.0, r.MeanWeight!.Value, 6));
        // the hook is off again afterwards
        Assert.All(adapter.Modules, m => Assert.Null(((MolaLayer)m.Adapter).Observer));
    }
}
