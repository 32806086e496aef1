export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
B="--config=configs/cifar10.py --config.dataset.name=cifar10_png --config.dataset.data_dir=/tmp/tfds --config.model.dropout_rate=0.0"
stamp() { python3 -c "import sys,time;t=time.time()
for l in sys.stdin: print(f'{time.time()-t:6.1f} {l}',end='',flush=True)"; }
echo "== import"; /usr/bin/time -f "%e s import" python3 -c "import sys;sys.path.insert(0,'.');import main"
echo "== e30 stamped"; rm -rf /tmp/w1; python3 main.py $B --config.num_epochs=30 --workdir=/tmp/w1 2>&1 | grep -v "^W1\|^I1" | stamp | grep -v "validation top-1" ; grep eval /tmp/w1/metrics.jsonl | tail -2
echo "== e30 autotune0"; rm -rf /tmp/w2; XLA_FLAGS=--xla_gpu_autotune_level=0 python3 main.py $B --config.num_epochs=30 --workdir=/tmp/w2 2>&1 | grep -v "^W1\|^I1" | stamp | tail -4
echo "== e30 cache fill"; rm -rf /tmp/w3; JAX_COMPILATION_CACHE_DIR=/tmp/jcc python3 main.py $B --config.num_epochs=30 --workdir=/tmp/w3 2>&1 | stamp | tail -2
echo "== e30 cache warm"; rm -rf /tmp/w3; JAX_COMPILATION_CACHE_DIR=/tmp/jcc python3 main.py $B --config.num_epochs=30 --workdir=/tmp/w3 --config.seed=1 2>&1 | grep -v "^W1\|^I1" | stamp | grep -v "validation top-1"
echo "== bare step"; python3 benchmarks/train_step.py --config=configs/cifar10.py --modes=shard_map --steps=50 --config.model.dropout_rate=0.0 2>&1 | grep "^|"
