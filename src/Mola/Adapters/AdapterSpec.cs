using System.Globalization;

namespace Mola.Adapters;

/// <summary>
/// The adapter a run asks for, before the model's layer count is known: the kind, allocation specs
/// (<see cref="ExpertAllocation"/>) and scalars, with the paper's defaults. <see cref="Build"/> is the one place an
/// <see cref="AdapterConfig"/> is made from them.
/// </summary>
public sealed record AdapterSpec
{
    public const string DefaultExperts = "inverted-triangle";
    public const string DefaultTopK = "2";
    /// <summary>The paper's adapter (MOLA.md): what every command and the library default to.</summary>
    public static readonly AdapterSpec Paper = new();

    public string Kind { get; init; } = "mola";
    /// <summary>Experts per layer; null: <see cref="DefaultExperts"/>. MoLA only: given for LoRA it is refused.</summary>
    public string? Experts { get; init; }
    /// <summary>Experts per token, per layer; null: <see cref="DefaultTopK"/>. MoLA only.</summary>
    public string? TopK { get; init; }
    public string Rank { get; init; } = "8";
    public string Targets { get; init; } = "all";
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; } = 0.05;
    public double AuxLossCoef { get; init; } = 0.001;
    /// <summary><c>--experts auto</c>: the exponent of the layer quality in the split (<see cref="AutoAllocation"/>).</summary>
    public double AllocationBeta { get; init; } = AutoAllocation.DefaultBeta;
    /// <summary><c>--experts auto</c>: the largest total of experts whose trainable parameters fit this many.</summary>
    public long? BudgetParams { get; init; }
    /// <summary><c>--experts auto</c>: the x_min search of the layer-quality fit (<c>peak</c> or <c>all</c>).</summary>
    public string XminSearch { get; init; } = "peak";
    /// <summary>How the experts start: <c>lora</c> (B = 0) or <c>pissa</c> (<see cref="PissaInit"/>; MoLA only).</summary>
    public string Init { get; init; } = "lora";
    /// <summary>Init pissa: subspace iterations of the randomized SVD (<see cref="TruncatedSvd"/>), 0 for the exact SVD.</summary>
    public int PissaIterations { get; init; } = PissaInit.DefaultIterations;

    /// <summary>The scalars (NaN and Infinity parse, so they are refused here).</summary>
    public void Validate()
    {
        Check(Alpha, "lora_alpha", v => v > 0 && double.IsFinite(v), "a positive finite number");
        Check(Dropout, "lora_dropout", v => v is >= 0 and < 1, "in [0, 1)");
        Check(AuxLossCoef, "aux_loss_coef", v => v >= 0 && double.IsFinite(v), "a finite number, 0 or more");
        Check(AllocationBeta, "allocation_beta", v => v >= 0 && double.IsFinite(v), "a finite number, 0 or more");
        if (BudgetParams is long b && b < 1) throw new MolaException(n => $"{n("budget_params")} must be a positive parameter count, got {b}");
        Analysis.XminSearchOption.Parse(XminSearch, "xmin_search");
        if (Init is not ("lora" or "pissa")) throw new MolaException(n => $"{n("init")} must be lora or pissa, got \"{Init}\"");
        if (Init == "pissa" && AdapterKinds.Parse(Kind) != AdapterKind.Mola)
            throw new MolaException(n => $"{n("init")} pissa applies to {n("adapter_kind")} mola (every expert of a module starts from the same singular triplets)");
        if (PissaIterations < 0) throw new MolaException(n => $"{n("pissa_iterations")} must be 0 (the exact SVD) or more, got {PissaIterations}");
    }

    static void Check(double v, string key, Func<double, bool> valid, string expected)
    {
        if (!valid(v)) throw new MolaException(n => $"{n(key)} must be {expected}, got {v.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>The adapter for a model of <paramref name="layers"/> layers; bad specs fail here, before any weight loads.
    /// <c>--experts auto:T</c> (or <c>auto</c> with <see cref="BudgetParams"/>) reads the weights of
    /// <paramref name="baseModel"/> for their layer quality (one eigendecomposition a matrix); <paramref name="log"/> gets its progress
    /// and the allocation made.</summary>
    public AdapterConfig Build(int layers, string baseModel, Action<string>? log = null)
    {
        Validate();
        var kind = AdapterKinds.Parse(Kind);
        var ranks = ExpertAllocation.Parse(Rank, layers, "rank");
        int[] e = [], k = [];
        AutoAllocationResult? auto = null;
        if (kind == AdapterKind.Mola && AutoAllocation.TryParse(Experts ?? "", "num_experts", out int? total))
        {
            var targets = TargetModules.Parse(Targets);
            var search = Analysis.XminSearchOption.Parse(XminSearch, "xmin_search");
            auto = AutoAllocation.Derive(baseModel, total, BudgetParams, AllocationBeta, search, ranks, targets,
                (done, all, _) => { if (done == all || done % Math.Max(1, all / 10) == 0) log?.Invoke($"layer quality {done}/{all} matrices"); });
            e = auto.Experts;
            k = TopK is null ? auto.TopK : ExpertAllocation.Parse(TopK, layers, "top_k");
            ExpertAllocation.Validate(e, k, ranks);
            log?.Invoke(auto.Describe());
        }
        else if (BudgetParams is not null)
        {
            throw new MolaException(n => $"{n("budget_params")} applies to {n("num_experts")} auto (the total of experts is then the largest that fits)");
        }
        else if (kind == AdapterKind.Mola)
        {
            e = ExpertAllocation.ParseExperts(Experts ?? DefaultExperts, layers, "num_experts");
            k = ExpertAllocation.Parse(TopK ?? DefaultTopK, layers, "top_k");
            ExpertAllocation.Validate(e, k, ranks);
        }
        else if (Experts is not null || TopK is not null)
        {
            // Rejected rather than ignored, as in `mola params`: someone passing them expects them to count.
            throw new MolaException(n => $"{n("num_experts")} and {n("top_k")} apply to {n("adapter_kind")} mola only (lora has one LoRA pair per module, no router)");
        }
        return new AdapterConfig
        {
            Kind = kind,
            BaseModelNameOrPath = baseModel,
            TargetModules = TargetModules.Parse(Targets),
            Rank = ranks,
            LoraAlpha = Alpha,
            LoraDropout = Dropout,
            NumExperts = e,
            TopK = k,
            AuxLossCoef = AuxLossCoef,
            Allocation = auto?.ToJson(),
            Pissa = Init == "pissa",
            PissaIterations = Init == "pissa" ? PissaIterations : 0,
        };
    }
}
