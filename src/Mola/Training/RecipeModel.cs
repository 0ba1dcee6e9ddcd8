using Mola.Adapters;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;

namespace Mola.Training;

/// <summary>A base model, its tokenizer and the run's template, handed to <see cref="TrainingRecipe.BeforeTraining"/>
/// and <see cref="TrainingRecipe.AfterTraining"/> (the adapter is attached: the model computes with it; its modules are
/// not the model's, so <c>Model.eval()</c> leaves them training: dropout off is <c>Adapter.eval()</c>).</summary>
public sealed record RecipeModel(CausalLM Model, MolaTokenizer Tokenizer, PromptTemplate Template, AdapterModel Adapter);
