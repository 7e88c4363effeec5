"""Times the official DARTS-PRIME supernet weight step (PyTorch, CPU) the way
`python -m dprime_tf.bench` times ours, for README "Speed".

Run it in a separate environment with PyTorch (never installed by this
project): `python -m venv /tmp/torch && /tmp/torch/bin/pip install torch==2.13.0
numpy`, then

    /tmp/torch/bin/python benchmarks/official_step.py --official=../shared/official/src

It imports the official source from --official (nothing of it is copied here),
builds its search network at the paper's size (C=16, 8 cells, 10 classes), and
times zero_grad / forward / backward / track_FI / clip_grad_norm_(5) / SGD step
on a random batch of 64 32x32 images: the median of --steps timed steps after
one warm-up, img/s and peak RSS. Compare with dprime-bench in one interleaved
run (official, ours, official, ours): absolute times vary by machine and load.
"""

import argparse
import resource
import statistics
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="the official code's src/ folder")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args()
    import torch
    import torch.nn as nn
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.Tensor.cuda = lambda self, *a, **k: self  # the scripts call .cuda() unconditionally
    nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, args.official)
    import model_admm_hard_statebn as official

    torch.manual_seed(0)
    net = official.Network(16, 10, 8, nn.CrossEntropyLoss(), 0.1, False, 50, -1, ewma=0.2, reg="darts")
    sgd = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))

    def step():
        sgd.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        net.track_FI()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        sgd.step()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"official weight step (torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}): first step {first:.1f} s | median {med:.3f} s [{min(times):.3f}-{max(times):.3f}] | "
          f"{args.batch_size / med:.1f} img/s")
    print(f"peak RSS: {rss:.2f} GB")


if __name__ == "__main__":
    main()
