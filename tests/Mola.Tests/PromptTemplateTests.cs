using Mola.Data;
using Xunit;

namespace Mola.Tests;

public class PromptTemplateTests
{
    // alpaca-lora's templates/alpaca.json, written out by hand.
    const string WithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\nName the ocean.\n\n### Input:\nsalt water\n\n### Response:\n";
    const string NoInput =
        "Below is an instruction that describes a task. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\nName the ocean.\n\n### Response:\n";

    [Fact]
    public void AlpacaPromptWithInputIsAlpacaLorasText() =>
        Assert.Equal(WithInput, PromptTemplate.Alpaca.Prompt("Name the ocean.", "salt water"));

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    public void AlpacaPromptWithoutInputIsAlpacaLorasText(string? input) =>
        Assert.Equal(NoInput, PromptTemplate.Alpaca.Prompt("Name the ocean.", input));

    [Fact]
    public void FullTextIsThePromptFollowedDirectlyByTheOutput()
    {
        var record = new InstructionRecord("Name the ocean.", "salt water", "The Pacific.");
        Assert.Equal(WithInput + "The Pacific.", PromptTemplate.Alpaca.Full(record));
        Assert.Equal("### Response:", PromptTemplate.Alpaca.ResponseSplit);
    }

    [Fact]
    public void BracesInTheRecordAreNotFilledAgain()
    {
        // str.format fills in one pass: an instruction that mentions {input} keeps it literally.
        string prompt = PromptTemplate.Alpaca.Prompt("Echo {input} and {instruction}", "x");
        Assert.Contains("### Instruction:\nEcho {input} and {instruction}\n\n### Input:\nx\n\n", prompt);
    }

    [Theory]
    [InlineData("The answer is B.", "The answer is B.")]                       // no marker: already a response
    [InlineData(NoInput + "  The answer is B. \n", "The answer is B.")]
    [InlineData(NoInput + "B\n\n### Response: C", "B")]                          // stops at a repeated marker, as split()[1] does
    [InlineData("x ### Response:### Response:y", "")]
    public void ExtractResponseTakesTheTextAfterTheMarkerTrimmed(string generated, string expected) =>
        Assert.Equal(expected, PromptTemplate.Alpaca.ExtractResponse(generated));

    [Fact]
    public void LoadsTheBuiltInByNameAndATemplateFile()
    {
        Assert.Same(PromptTemplate.Alpaca, PromptTemplate.Load("alpaca"));
        string path = Path.Combine(TestUtil.TempDir(), "qa.json");
        File.WriteAllText(path, """
            {"prompt_input": "Q: {instruction} ({input}) {{literal}}\nA:", "prompt_no_input": "Q: {instruction}\nA:", "response_split": "A:"}
            """);
        var t = PromptTemplate.Load(path);
        Assert.Equal("Q: why (because) {literal}\nA:", t.Prompt("why", "because"));
        Assert.Equal("Q: why\nA:", t.Prompt("why"));
        Assert.Equal("42", t.ExtractResponse("Q: why\nA: 42\n"));
    }

    [Fact]
    public void ADuplicateKeyNamesTheFileTheLineAndTheKey()
    {
        // Which of the two prompts won was the parser's accident.
        string path = Path.Combine(TestUtil.TempDir(), "t.json");
        File.WriteAllText(path, "{\"prompt_input\": \"{instruction} {input}\",\n\"prompt_no_input\": \"{instruction}\",\n\"prompt_input\": \"{input} {instruction}\",\n\"response_split\": \"R\"}");
        var e = Assert.Throws<MolaException>(() => PromptTemplate.Load(path));
        Assert.Equal($"{path}:3: duplicate key \"prompt_input\" (each key may appear once in an object)", e.Message);
    }

    [Fact]
    public void MissingKeyNamesTheFileAndTheKey()
    {
        string path = Path.Combine(TestUtil.TempDir(), "broken.json");
        File.WriteAllText(path, """{"prompt_input": "{instruction} {input}", "response_split": "A:"}""");
        var e = Assert.Throws<MolaException>(() => PromptTemplate.Load(path));
        Assert.StartsWith($"{path}: missing key \"prompt_no_input\"", e.Message);
    }

    [Fact]
    public void UnknownPlaceholderNamesTheFileTheKeyAndThePlaceholder()
    {
        string path = Path.Combine(TestUtil.TempDir(), "odd.json");
        File.WriteAllText(path, """{"prompt_input": "{instruction} {input}", "prompt_no_input": "{instruction} {input}", "response_split": ""}""");
        var e = Assert.Throws<MolaException>(() => PromptTemplate.Load(path));
        Assert.StartsWith($"{path}: \"prompt_no_input\" uses {{input}}", e.Message);
    }

    [Theory]
    [InlineData("Q: {input}\nA:", "Q: {instruction}\nA:", "\"prompt_input\" does not use {instruction}")]
    [InlineData("Q: {instruction}\nA:", "Q: {instruction}\nA:", "\"prompt_input\" does not use {input}")]
    [InlineData("Q: {instruction} {input}\nA:", "Q:\nA:", "\"prompt_no_input\" does not use {instruction}")]
    public void ATemplateThatLeavesAFieldOutIsRefused(string withInput, string noInput, string message)
    {
        string path = Path.Combine(TestUtil.TempDir(), "partial.json");
        File.WriteAllText(path, System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["prompt_input"] = withInput,
            ["prompt_no_input"] = noInput,
            ["response_split"] = "A:",
        }));
        var e = Assert.Throws<MolaException>(() => PromptTemplate.Load(path));
        Assert.StartsWith($"{path}: {message}", e.Message);
    }

    [Fact]
    public void UnknownNameSaysWhatIsBuiltIn()
    {
        var e = Assert.Throws<MolaException>(() => PromptTemplate.Load("vicuna"));
        Assert.Contains("built in: alpaca", e.Message);
    }
}
