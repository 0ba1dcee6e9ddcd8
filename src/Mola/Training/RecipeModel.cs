using Mola.Data;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Training;

/// <summary>A base model, its tokenizer and the run's template, handed to <see cref="TrainingRecipe.BeforeTraining"/>
/// and <see cref="TrainingRecipe.AfterTraining"/> (the adapter is attached: the model computes with it).</summary>
public sealed record RecipeModel(CausalLM Model, MolaTokenizer Tokenizer, PromptTemplate Template);
