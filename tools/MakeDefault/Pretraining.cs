using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Mola.Data;
using Mola.Models;
using Mola.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MakeDefault;

public sealed record PretrainOptions
{
    public int Seed { get; init; } = 1234;
    public int Steps { get; init; } = 3000;
    public int BatchSize { get; init; } = 8;
    public int SequenceLength { get; init; } = 256;
    public double LearningRate { get; init; } = 3e-3;
    public int WarmupSteps { get; init; } = 100;
    public int HiddenSize { get; init; } = 128;
    public int IntermediateSize { get; init; } = 352;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
}

/// <summary>Builds a small LLaMA from scratch and trains all of its parameters on the pretraining corpus.</summary>
public static class Pretraining
{
    public static ModelConfig Config(PretrainOptions o, int vocab) => new()
    {
        ModelType = "llama",
        VocabSize = vocab,
        HiddenSize = o.HiddenSize,
        IntermediateSize = o.IntermediateSize,
        NumHiddenLayers = o.Layers,
        NumAttentionHeads = o.Heads,
        NumKeyValueHeads = o.Heads,
        HeadDim = o.HiddenSize / o.Heads,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        MaxPositionEmbeddings = 512,
        BosTokenId = 1,
        EosTokenId = 2,
    };

    /// <summary>GPT-2 style: N(0, 0.02), the maps into the residual stream scaled by 1/sqrt(2 layers), norms 1.</summary>
    static void Initialise(CausalLM model, int layers)
    {
        using var _ = no_grad();
        foreach (var (name, p) in model.named_parameters())
        {
            if (name.EndsWith("norm.weight")) nn.init.ones_(p);
            else if (name.EndsWith("o_proj.weight") || name.EndsWith("down_proj.weight")) nn.init.normal_(p, 0, 0.02 / Math.Sqrt(2 * layers));
            else nn.init.normal_(p, 0, 0.02);
            p.requires_grad = true;
        }
    }

    /// <summary>Documents (BOS ... EOS) back to back, cut into rows of a fixed length (no padding),
    /// with their labels: the token, or -100 where the document's prompt is not scored.</summary>
    sealed class TokenStream(MolaTokenizer tok, Random rnd)
    {
        readonly Queue<(int Id, long Label)> _pending = new();

        public (List<int> Ids, List<long> Labels) Next(int length)
        {
            while (_pending.Count < length)
            {
                var doc = PretrainingCorpus.Next(rnd);
                var ids = tok.Encode(doc.Text, bos: true, eos: true);
                int unscored = doc.ScorePrompt ? 0 : tok.Encode(doc.Prompt, bos: true).Count;
                for (int i = 0; i < ids.Count; i++) _pending.Enqueue((ids[i], i < unscored ? Losses.IgnoreIndex : ids[i]));
            }
            var row = Enumerable.Range(0, length).Select(_ => _pending.Dequeue()).ToList();
            return (row.Select(t => t.Id).ToList(), row.Select(t => t.Label).ToList());
        }
    }

    public static CausalLM Train(PretrainOptions o, MolaTokenizer tok, TextWriter log, Action<CausalLM>? checkpoint = null)
    {
        torch.manual_seed(o.Seed);
        var config = Config(o, tok.VocabSize);
        var model = new CausalLM(config, ScalarType.Float32, CPU);
        Initialise(model, o.Layers);
        long count = model.parameters().Sum(p => p.numel());
        log.WriteLine($"model: {o.Layers} layers, hidden {o.HiddenSize}, intermediate {o.IntermediateSize}, {o.Heads} heads, vocab {tok.VocabSize}: {count:N0} parameters");
        model.train();

        var parameters = model.parameters().ToList();
        var optimizer = optim.AdamW(parameters, lr: o.LearningRate, beta1: 0.9, beta2: 0.95, weight_decay: 0.01);
        var stream = new TokenStream(tok, new Random(o.Seed));
        var probeRnd = new Random(o.Seed + 1);
        var probes = new[] { ("energy or matter", 4), ("number in list", 6) }
            .Select(p => (Name: p.Item1, Records: Enumerable.Range(0, 48).Select(_ => PretrainingCorpus.OtherTask(probeRnd, p.Item2)).ToList()))
            .Append((Name: "default task", Records: DefaultTask.Split(99, 0, 48).Test)).ToList();
        var clock = Stopwatch.StartNew();
        double smoothed = double.NaN;
        for (int step = 1; step <= o.Steps; step++)
        {
            double lr = LearningRate(o, step);
            foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
            using var scope = NewDisposeScope();
            var rows = Enumerable.Range(0, o.BatchSize).Select(_ => stream.Next(o.SequenceLength)).ToList();
            using var batch = Batching.PadRight(rows.Select(r => r.Ids).ToList(), 0, CPU, rows.Select(r => r.Labels).ToList());
            optimizer.zero_grad();
            var logits = model.Forward(batch.InputIds);
            var loss = Losses.CausalLm(logits, batch.Labels);
            loss.backward();
            nn.utils.clip_grad_norm_(parameters, 1.0);
            optimizer.step();
            double l = loss.item<float>();
            smoothed = double.IsNaN(smoothed) ? l : 0.98 * smoothed + 0.02 * l;
            if (step % 50 == 0 || step == 1 || step == o.Steps)
                log.WriteLine($"step {step,5}  loss {l:F4}  smoothed {smoothed:F4}  lr {lr:E2}  {clock.Elapsed.TotalSeconds:F0} s");
            if (step % 250 == 0 || step == o.Steps)
            {
                model.eval();
                log.WriteLine("  letter accuracy (teacher-forced): " + string.Join(", ", probes.Select(p => $"{p.Name} {Experiment.LetterAccuracy(model, tok, p.Records):P0}")));
                model.train();
                if (checkpoint is not null && step < o.Steps) checkpoint(model);
            }
        }
        model.eval();
        foreach (var p in model.parameters()) p.requires_grad = false;
        return model;
    }

    /// <summary>Linear warm-up, then cosine decay to a tenth.</summary>
    static double LearningRate(PretrainOptions o, int step)
    {
        if (step <= o.WarmupSteps) return o.LearningRate * step / o.WarmupSteps;
        double t = (double)(step - o.WarmupSteps) / Math.Max(1, o.Steps - o.WarmupSteps);
        return o.LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * t)));
    }

    /// <summary>Writes config.json and model.safetensors (float32) in Hugging Face layout.</summary>
    public static void Save(CausalLM model, string directory)
    {
        Directory.CreateDirectory(directory);
        var c = model.Config;
        var json = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["vocab_size"] = c.VocabSize,
            ["hidden_size"] = c.HiddenSize,
            ["intermediate_size"] = c.IntermediateSize,
            ["num_hidden_layers"] = c.NumHiddenLayers,
            ["num_attention_heads"] = c.NumAttentionHeads,
            ["num_key_value_heads"] = c.NumKeyValueHeads,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = c.MaxPositionEmbeddings,
            ["rms_norm_eps"] = c.RmsNormEps,
            ["rope_theta"] = c.RopeTheta,
            ["tie_word_embeddings"] = false,
            ["bos_token_id"] = c.BosTokenId,
            ["eos_token_id"] = c.EosTokenId,
            ["torch_dtype"] = "float32",
        };
        File.WriteAllText(Path.Combine(directory, "config.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        var tensors = model.named_parameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)).ToList();
        SafeTensorsFile.Save(Path.Combine(directory, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
