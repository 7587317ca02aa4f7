"""Heads as units: prune half the heads and MLP width of torchvision ViT-B/16 (classifier kept)."""
import torch, torchvision, fxprune
model = torchvision.models.vit_b_16().eval()
torch.nn.init.normal_(model.heads.head.weight, std=0.02)
x = torch.randn(1, 3, 224, 224)
res = fxprune.prune(model, x, ratio=0.5, ignore=[model.heads.head])
attn = res.module.get_submodule("encoder.layers.encoder_layer_0.self_attention")
print(type(attn).__name__, "heads:", attn.num_heads, "head_dim:", attn.head_dim)
print(fxprune.count(model, x), "->", fxprune.count(res.module, x))
print(f"{fxprune.verify(model, res, x):.1e}")
