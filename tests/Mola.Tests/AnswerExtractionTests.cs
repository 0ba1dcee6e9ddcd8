using Mola.Evaluation;
using Xunit;

namespace Mola.Tests;

public class AnswerExtractionTests
{
    static readonly string[] Letters = ["A", "B", "C", "D", "E"];
    static readonly string[] Mrpc = ["not_equivalent", "equivalent"];
    static readonly string[] Cola = ["unacceptable", "acceptable"];
    static readonly string[] Rte = ["entailment", "not_entailment"];

    [Theory]
    // The training output and its near variants.
    [InlineData("Answer: The answer is B.", "B")]
    [InlineData("The answer is B.", "B")]
    [InlineData("The answer is (B).", "B")]
    [InlineData("the answer is b", "B")]
    [InlineData("THE ANSWER IS C", "C")]
    [InlineData("The answer is: D.", "D")]
    [InlineData("The answer is ( e )", "E")]
    [InlineData("The answer is option C.", "C")]
    [InlineData("The correct answer is \"A\".", "A")]
    [InlineData("Answer: The answer is B.</s>", "B")]
    [InlineData("  \n Answer: The answer is A. BECAUSE: plants need light.", "A")]
    // Bare labels.
    [InlineData("B", "B")]
    [InlineData("B.", "B")]
    [InlineData("(B)", "B")]
    [InlineData("b", "B")]
    [InlineData("Answer: C", "C")]
    [InlineData("(D) a ruler", "D")]
    [InlineData("Answer: (B) inherited", "B")]
    [InlineData("The answer is B)", "B")]
    // Two letters: the one after "answer is" wins.
    [InlineData("The answer is B, not C.", "B")]
    [InlineData("Not A. The answer is C.", "C")]
    [InlineData("Options (A) and (B) are wrong; the answer is D", "D")]
    [InlineData("The answer is B. The answer is B. The answer is", "B")]
    [InlineData("The answer is B. The answer is C.", "B")]
    // A cue followed by no label is skipped, the next one decides.
    [InlineData("The answer is unclear at first. The answer is E.", "E")]
    // The original evaluation's full decode: only the part after "### Response:" counts.
    [InlineData("### Instruction:\nQuestion: Pick one.\nOptions: (A) x (B) y\n\n### Response:\nAnswer: The answer is A.", "A")]
    public void ReadsALetter(string text, string expected) => Assert.Equal(expected, AnswerExtraction.Extract(text, Letters));

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("I don't know.")]
    [InlineData("B or C")]
    [InlineData("(B) or (C)? Hard to say.")]
    [InlineData("the answer is a dog")]          // lower-case "a" followed by a word is the article
    [InlineData("The answer isn't clear")]
    [InlineData("The answer is F.")]              // not a label of the task
    [InlineData("A cat sat on the mat.")]         // a capital A starting a sentence is no answer
    [InlineData("The answer is Because of light")]
    [InlineData("Answer:")]
    [InlineData("BC")]
    public void UnreadableLetterIsNull(string text) => Assert.Null(AnswerExtraction.Extract(text, Letters));

    [Fact]
    public void LetterOutsideAFourLetterSetIsNull()
    {
        Assert.Null(AnswerExtraction.Extract("The answer is E.", ["A", "B", "C", "D"]));
        Assert.Equal("D", AnswerExtraction.Extract("The answer is E. The answer is D.", ["A", "B", "C", "D"]));
    }

    [Theory]
    [InlineData("Answer: The answer is equivalent.", "equivalent")]
    [InlineData("Answer: The answer is not_equivalent.", "not_equivalent")]
    [InlineData("The answer is not equivalent", "not_equivalent")]
    [InlineData("The answer is Not-Equivalent.", "not_equivalent")]
    [InlineData("The answer is EQUIVALENT", "equivalent")]
    [InlineData("equivalent", "equivalent")]
    [InlineData("not_equivalent.", "not_equivalent")]
    [InlineData("The two sentences are equivalent.", "equivalent")]
    // The cue decides even when the other label is mentioned.
    [InlineData("The answer is equivalent, not not_equivalent.", "equivalent")]
    [InlineData("It is not equivalent... The answer is equivalent.", "equivalent")]
    public void ReadsAnMrpcWord(string text, string expected) => Assert.Equal(expected, AnswerExtraction.Extract(text, Mrpc));

    [Theory]
    [InlineData("The answer is unacceptable.", "unacceptable")]
    [InlineData("The answer is acceptable.", "acceptable")]
    [InlineData("unacceptable", "unacceptable")]  // "acceptable" inside "unacceptable" is not a whole word
    [InlineData("The answer is \"acceptable\"", "acceptable")]
    public void ReadsAColaWord(string text, string expected) => Assert.Equal(expected, AnswerExtraction.Extract(text, Cola));

    [Theory]
    [InlineData("Answer: The answer is entailment.", "entailment")]
    [InlineData("Answer: The answer is not_entailment.", "not_entailment")]
    [InlineData("not entailment", "not_entailment")]
    [InlineData("The answer is not_entailment. not_entailment", "not_entailment")]
    public void ReadsAnRteWord(string text, string expected) => Assert.Equal(expected, AnswerExtraction.Extract(text, Rte));

    [Theory]
    [InlineData("")]
    [InlineData("Maybe.")]
    [InlineData("entailment or not_entailment")]      // both named, no cue
    [InlineData("entailments")]                       // not a whole word
    [InlineData("The answer is B.")]                  // a letter is no GLUE label
    public void UnreadableRteWordIsNull(string text) => Assert.Null(AnswerExtraction.Extract(text, Rte));

    [Fact]
    public void NoLabelsIsAnArgumentError() => Assert.Throws<ArgumentException>(() => AnswerExtraction.Extract("B", []));
}
