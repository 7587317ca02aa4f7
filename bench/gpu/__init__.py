"""The prepared GPU run (``bench/gpu_run.py``): one command that measures CUDA latency of
original vs pruned torchvision models and retrains a pruned ResNet-56 on CIFAR-10 with the
data resident on the device, inside a fixed time budget.

Modules: ``budget`` (deadlines, watchdog, the results file), ``env`` (what machine ran it),
``zoo`` (models and their pruned variants), ``latency`` (eager / CUDA graphs / ORT / TensorRT
timing), ``compile_worker`` (``torch.compile`` timing in a time-boxed child process),
``data`` (CIFAR-10 decoded once, batches and augmentation on the device), ``train`` (the
training loop and the fine-tune / Scratch-E / LR-rewind comparison), ``report`` (markdown
and plot from the JSON).
"""
