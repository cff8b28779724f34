"""CPU forward time of an official network in MXNet 1.9.1 and in dcnviz, interleaved, and their ratio.

Run it with the MXNet venv's python (tools/README.md); it starts a dcnviz worker with ``--dcnviz-python``
(default: ``python3`` on PATH, which must import dcnviz) and times, in turn within each repeat, one
MXNet forward of the network as tools/mxnet_reference.py builds it and one ``forward_official`` of the
dcnviz model as ``dcnviz bench model`` prepares it. Both get random weights, the same input size (the
release's test size by default: 600x1000 for R-FCN) and the same ``--rois`` boxes fed to the head, so the
proposal layer is not timed in either (MXNet's graph has none; dcnviz skips it when given RoIs).

    ~/.cache/dcnviz-ci/mxvenv-*/bin/python tools/bench_mxnet.py --model rfcn_dcn_coco \\
        --dcnviz-python /path/to/venv/bin/python

Timings depend on the machine and on what else runs on it: compare figures taken in one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# MXNet sizes its OpenMP pool as it loads: without OMP_NUM_THREADS (or MXNET_OMP_MAX_THREADS) it takes half
# of the CPUs on x86 (src/engine/openmp.cc counts two hardware threads a core), 1 thread on a 2-core
# machine against torch's 2, which doubles its time. So both sides get the same count: OMP_NUM_THREADS
# where it is set, else every CPU this process may run on; the dcnviz worker inherits it.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxnet as mx  # noqa: E402
from mxnet_reference import MODELS, build, initial_weights, make_rois  # noqa: E402

# The dcnviz side: one model, then one timed forward per line read from stdin (its seconds written back).
WORKER = r"""
import sys, time, numpy as np, torch
from dcnviz.memory import keep_freed_memory
from dcnviz.models import get_spec
from dcnviz.models.mxnet_cpu import mxnet_cpu_inference
name, h, w, rois_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keep_freed_memory()  # as the dcnviz command does
torch.manual_seed(0)
data = torch.randn(1, 3, h, w) * 60
rois = torch.from_numpy(np.load(rois_path))
net = mxnet_cpu_inference(get_spec(name).factory().eval())
print(torch.get_num_threads(), torch.__version__, flush=True)
with torch.inference_mode():
    for _ in sys.stdin:
        start = time.perf_counter()
        net.forward_official(data, rois)
        print(time.perf_counter() - start, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rfcn_dcn_coco", help="an R-FCN or Faster R-CNN network of the tool")
    parser.add_argument("--size", help="HxW of the input (default: the release's test size)")
    parser.add_argument("--rois", type=int, default=300, help="RoIs fed to the head (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards of each, after one warm-up")
    parser.add_argument("--dcnviz-python", default="python3")
    args = parser.parse_args()
    kind = MODELS[args.model][0]
    if kind not in ("rfcn", "rcnn"):
        parser.error("--model must be an R-FCN or Faster R-CNN network")
    h, w = (int(v) for v in args.size.lower().split("x")) if args.size else MODELS[args.model][6:8]
    rng = np.random.RandomState(0)
    rois = make_rois(h, w, args.rois, rng)
    b = build(args.model, input_hw=(h, w))
    net = mx.sym.Group(list(b.blobs.values()))
    feed = {"data": rng.randn(1, 3, h, w).astype(np.float32) * 60, "rois": rois}
    arg_shapes, _, aux_shapes = net.infer_shape(**{k: v.shape for k, v in feed.items()})
    shapes = {n: tuple(s) for n, s in zip(net.list_arguments(), arg_shapes) if n not in feed}
    weights = initial_weights(shapes, np.random.default_rng(0))
    args_nd = {k: mx.nd.array(v) for k, v in weights.items()}
    args_nd.update({k: mx.nd.array(v) for k, v in feed.items()})
    aux = {n: mx.nd.ones(s) if n.endswith("var") else mx.nd.zeros(s)
           for n, s in zip(net.list_auxiliary_states(), aux_shapes)}
    ex = net.bind(mx.cpu(), args={k: args_nd[k] for k in net.list_arguments()}, aux_states=aux, grad_req="null")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rois.npy")
        np.save(path, rois)
        worker = subprocess.Popen([args.dcnviz_python, "-c", WORKER, args.model, str(h), str(w), path],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        threads, torch_version = worker.stdout.readline().split()
        times = {"mxnet": [], "dcnviz": []}
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            [o.wait_to_read() for o in ex.forward(is_train=False)]
            mx_s = time.perf_counter() - start
            worker.stdin.write("go\n")
            worker.stdin.flush()
            dcn_s = float(worker.stdout.readline())
            if i:  # the first round warms up
                times["mxnet"].append(mx_s)
                times["dcnviz"].append(dcn_s)
        worker.stdin.close()
        worker.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"model": args.model, "input": [h, w], "rois": args.rois, "mxnet": mx.__version__,
                      "torch": torch_version, "omp_num_threads": int(os.environ["OMP_NUM_THREADS"]),
                      "torch_threads": int(threads), "repeats": args.repeats,
                      "runs_s": times, "median_s": med, "ratio_dcnviz_to_mxnet": round(med["dcnviz"] / med["mxnet"], 3)},
                     indent=1))


if __name__ == "__main__":
    main()
