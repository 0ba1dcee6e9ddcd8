using Mola.Models;
using static TorchSharp.torch;

namespace Mola.Adapters;

/// <summary>What the adapter model needs from a layer of either kind (MoLA, LoRA), so that it does not switch on
/// the kind: the forward pass around the frozen linear, its tensors by PEFT name, and merging.</summary>
public interface IAdapterLayer : ILinearAdapter
{
    /// <summary>Its tensors under their PEFT names below <paramref name="prefix"/> (<see cref="AdapterFile.Prefix"/>):
    /// what adapter_model.safetensors holds for this module.</summary>
    IEnumerable<(string Name, Tensor Tensor)> PeftTensors(string prefix);

    /// <summary>Folds the layer into <paramref name="baseLayer"/>'s weight for fast inference.</summary>
    void Merge(Linear baseLayer);

    /// <summary>Undoes <see cref="Merge"/>; nothing to do when it was never merged.</summary>
    void Unmerge(Linear baseLayer);

    /// <summary>How its products compute over a bfloat16/float16 base (<see cref="AdapterPrecision"/>); mixed by default.</summary>
    AdapterPrecision Precision { get; set; }
}
