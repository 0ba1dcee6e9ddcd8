using System.Text.Json;
using Mola.Generation;
using Mola.Templating;
using Mola.Tokenization;
using Xunit;

namespace Mola.Tests;

/// <summary>
/// The Jinja subset against Python's Jinja2: Fixtures/chat-templates/cases.json holds the chat templates of
/// Llama-2-chat, Mistral-Instruct (v0.1, v0.2), Gemma-it, Zephyr and ChatML, and one template covering the rest of
/// the subset, rendered over five conversations by the real Jinja2 (generate.py, as Hugging Face configures it).
/// </summary>
public class ChatTemplateTests
{
    static readonly JsonElement Cases = JsonDocument.Parse(File.ReadAllText(TestUtil.Fixture("chat-templates", "cases.json"))).RootElement;

    public static TheoryData<int> CaseIndices()
    {
        var data = new TheoryData<int>();
        for (int i = 0; i < Cases.GetProperty("cases").GetArrayLength(); i++) data.Add(i);
        return data;
    }

    static List<(string Role, string Content)> Messages(string name) =>
        Cases.GetProperty("messages").GetProperty(name).EnumerateArray()
            .Select(m => (m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();

    static Dictionary<string, object?> Variables(JsonElement c) => new()
    {
        ["messages"] = Messages(c.GetProperty("messages").GetString()!)
            .Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
        ["bos_token"] = Cases.GetProperty("tokens").GetProperty("bos_token").GetString(),
        ["eos_token"] = Cases.GetProperty("tokens").GetProperty("eos_token").GetString(),
        ["add_generation_prompt"] = c.GetProperty("add_generation_prompt").GetBoolean(),
    };

    [Theory]
    [MemberData(nameof(CaseIndices))]
    public void RendersAsJinja2Does(int index)
    {
        var c = Cases.GetProperty("cases")[index];
        string name = c.GetProperty("template").GetString()!;
        var template = JinjaTemplate.Parse(Cases.GetProperty("templates").GetProperty(name).GetString()!);
        if (c.TryGetProperty("expected", out var expected))
            Assert.Equal(expected.GetString(), template.Render(Variables(c)));
        else
        {
            var e = Assert.Throws<TemplateException>(() => template.Render(Variables(c)));
            Assert.Equal(c.GetProperty("error").GetString(), e.Message);
        }
    }

    [Theory]
    [InlineData("{% macro m() %}x{% endmacro %}", "line 1: {% macro %} is outside the supported Jinja subset")]
    [InlineData("a\n{{ messages | tojson }}", "line 2: filter |tojson is outside the supported Jinja subset")]
    [InlineData("{% set ns = namespace(found=false) %}", "line 1: function namespace(...) is outside the supported Jinja subset")]
    [InlineData("{{ {'a': 1} }}", "dict literals are outside the supported Jinja subset")]
    [InlineData("{{ 2 ** 3 }}", "\"**\" is outside the supported Jinja subset")]
    [InlineData("{{ m.content.split() }}", "method .split() is outside the supported Jinja subset")]
    [InlineData("{% for m in messages %}{% break %}{% endfor %}", "{% break %} is outside the supported Jinja subset")]
    [InlineData("{% for a, b in x %}{% endfor %}", "several loop variables")]
    [InlineData("{% if x is even %}{% endif %}", "test \"is even\" is outside the supported Jinja subset")]
    [InlineData("{% if x %}", "the template ends before {% endif %}")]
    [InlineData("{% endfor %}", "{% endfor %} without a matching opening tag")]
    [InlineData("{{ 'abc' ", "\"{{\" is never closed with \"}}\"")]
    public void RefusesWhatIsOutsideTheSubsetNamingTheConstruct(string source, string message)
    {
        var e = Assert.Throws<TemplateException>(() => JinjaTemplate.Parse(source));
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("{{ missing + 'x' }}", "\"+\" on missing, which is undefined")]
    [InlineData("{{ 'a' + 1 }}", "\"+\" on a string")]
    [InlineData("{{ messages }}", "printing a list is outside the supported Jinja subset")]
    [InlineData("{{ 1 // 0 }}", "division by zero")]
    public void FailsWhereJinjaWouldOrWherePrintingIsNoPrompt(string source, string message)
    {
        var template = JinjaTemplate.Parse(source);
        var e = Assert.Throws<TemplateException>(() => template.Render(new Dictionary<string, object?> { ["messages"] = new List<object?>() }));
        Assert.Contains(message, e.Message);
    }

    /// <summary>A model directory with <paramref name="config"/> as its tokenizer_config.json.</summary>
    static string ModelWith(string config)
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config);
        return dir;
    }

    [Fact]
    public void TheModelsTemplateWritesBosAndEosAsTokensAndTheTextBetweenAsTheTokenizerEncodesIt()
    {
        string llama2 = Cases.GetProperty("templates").GetProperty("llama-2-chat").GetString()!;
        string dir = ModelWith(JsonSerializer.Serialize(new { chat_template = llama2, bos_token = new { content = "<s>" }, eos_token = "</s>" }));
        var template = ChatTemplate.FromModel(dir)!;
        var tok = MolaTokenizer.Load(dir);
        var ids = template.Encode(tok, [("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")]);
        // As Hugging Face tokenises the rendered text (no special tokens added, "<s>"/"</s>" matched in the text).
        List<int> expected = [tok.BosId, .. tok.Encode("[INST] Hi [/INST] Hello "), tok.EosId, tok.BosId, .. tok.Encode("[INST] Bye [/INST]")];
        Assert.Equal(expected, ids);
        Assert.Equal(1, ids.Count(i => i == tok.EosId));
    }

    [Fact]
    public void AModelWithoutAChatTemplateHasNone()
    {
        Assert.Null(ChatTemplate.FromModel(TestUtil.Fixture("llama-tiny")));
        Assert.Null(ChatTemplate.FromModel(ModelWith("""{"bos_token": "<s>"}""")));
    }

    [Fact]
    public void AChatTemplateOutsideTheSubsetIsRefusedAtLoadNamingTheFile()
    {
        string dir = ModelWith("""{"chat_template": "{% for m in messages %}{{ m | tojson }}{% endfor %}"}""");
        var e = Assert.Throws<MolaException>(() => ChatTemplate.FromModel(dir));
        Assert.Equal($"{Path.Combine(dir, "tokenizer_config.json")}: chat_template line 1: filter |tojson is outside the supported Jinja subset (supported: |trim, |length)", e.Message);
    }

    [Fact]
    public void RaiseExceptionIsABadRequestWithTheTemplatesMessage()
    {
        string gemma = Cases.GetProperty("templates").GetProperty("gemma-it").GetString()!;
        string dir = ModelWith(JsonSerializer.Serialize(new { chat_template = gemma, bos_token = "<s>", eos_token = "</s>" }));
        var template = ChatTemplate.FromModel(dir)!;
        var e = Assert.Throws<InvalidRequestException>(() => template.Encode(MolaTokenizer.Load(dir), [("system", "x"), ("user", "y")]));
        Assert.Equal("messages", e.Param);
        Assert.EndsWith("refused them: System role not supported", e.Message);
    }

    [Fact]
    public void ATemplateFileTakesItsTokensFromTheModelOrTheTokenizer()
    {
        string dir = TestUtil.CopyFixture("llama-tiny");
        string file = Path.Combine(dir, "chat.jinja");
        File.WriteAllText(file, "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}");
        var tok = MolaTokenizer.Load(dir);
        var ids = ChatTemplate.Load(file, dir).Encode(tok, [("user", "rock")]);
        Assert.Equal([tok.BosId, .. tok.Encode("rock"), tok.EosId], ids);
        Assert.Equal("<s>", tok.Piece(tok.BosId));
    }
}
