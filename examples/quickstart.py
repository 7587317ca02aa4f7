"""Quick start: analyse, prune, verify and replay a plan on torchvision resnet18."""
import torch, torchvision, fxprune
model = torchvision.models.resnet18().eval()
x = torch.randn(1, 3, 224, 224)
cg = fxprune.analyze(model, x)
print(len(cg.groups), "groups;", cg.groups[0])
print(cg.groups[0].slices(0)[:3])
res = fxprune.prune(model, x, ratio=0.5, criterion="l1")
print(fxprune.count(model, x), "->", fxprune.count(res.module, x))
print("max relative diff vs dead-channel oracle:", f"{fxprune.verify(model, res, x):.1e}")
plan = fxprune.PruningPlan.from_json(res.plan.to_json())
again = fxprune.apply_plan(torchvision.models.resnet18().eval(), x, plan)
print("replayed:", fxprune.count(again.module, x))
