#!/bin/bash
# Issue 29's PAST rows of Market-1501 -> DukeMTMC-reID from the PCB source model, on a lent GPU:
# PAST Table 1 (CTL, RTL, CTL + RTL; the preset is "+ promoting"), Table 2 (k-means with the
# source's k = 751, DBSCAN; the preset is HDBSCAN), seeds 0-2 of the preset, and the preset with
# camera normalisation: nine runs at once, 1 loader worker each (16 cores).
# The overrides are those of benchmarks/uda_runs.py (groups past_t1, past_t2, seeds, past_tries).
# Inputs in .gpu/ (ignored by git; carry [".gpu"], about 55 MiB):
#   duke.tgz                  pack_target.py's DukeMTMC-reID at 128x64, JPEG q70 (41.7 MB)
#   source_market1501_pcb.pt  runs/source_market1501_pcb_cpu/checkpoints/best.pt's model in
#                             half precision, trainer state dropped (13 MiB, not 26: the 64 MiB
#                             limit); see pack_target.py's docstring for the command. Rounded to
#                             half precision, the Duke PCB source's 2304-d features on 16 random
#                             inputs keep a cosine >= 0.99999 to the float32 model's (2026-12-07).
# Run from the repository root as the device tool does:
#   BUDGET=420 bash benchmarks/device/past_pcb_m2d.sh
# One .tgz comes back in $OUT; unpack it into benchmarks/results/uda_runs/.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
START=$SECONDS; END=$((SECONDS+${BUDGET:-420}))
{ nvidia-smi -L; python3 -c "import torch,sklearn,numpy;print(torch.__version__,sklearn.__version__,numpy.__version__)"; nproc; } > $OUT/env.txt 2>&1
R=/tmp/gpuruns; mkdir -p $R /tmp/gpudata && tar -xzf .gpu/duke.tgz -C /tmp/gpudata
one() {  # name overrides...
  n=$1; shift; t0=$SECONDS; mkdir -p $R/$n
  timeout $((END-SECONDS)) python3 -m adaptreid adapt --config configs/past/market1501_to_dukemtmc_cpu.yaml \
    -q name=$n "$@" device=cuda data.num_workers=1 data.source_root=/nonexistent \
    data.target_root=/tmp/gpudata/data/dukemtmc adapt.init_checkpoint=.gpu/source_market1501_pcb.pt \
    output_dir=$R > $R/$n/stdout.txt 2>&1
  echo "{\"rc\": $?, \"wall_s\": $((SECONDS-t0))}" > $R/$n/wall.json
}
one past_m2d_pcb_gpu_ctl seed=0 method.use_rtl=false method.use_promoting=false &
one past_m2d_pcb_gpu_rtl seed=0 method.use_ctl=false method.use_promoting=false &
one past_m2d_pcb_gpu_ctl_rtl seed=0 method.use_promoting=false &
one past_m2d_pcb_gpu_kmeans seed=0 pseudo.method=kmeans pseudo.kmeans_k=751 &
one past_m2d_pcb_gpu_dbscan seed=0 pseudo.method=dbscan pseudo.auto_eps=true &
one past_m2d_pcb_gpu_seed0 seed=0 &
one past_m2d_pcb_gpu_seed1 seed=1 &
one past_m2d_pcb_gpu_seed2 seed=2 &
one past_m2d_pcb_gpu_cn seed=0 pseudo.camera_norm=true &
wait
echo "all done at $((SECONDS-START)) s"
cd $R && tar -czf $OUT/past_pcb_m2d.tgz */metrics.jsonl */log.txt */config.yaml */wall.json */stdout.txt
