#!/bin/bash
# Seed spread of the PAST and MSPLR Market-1501 -> DukeMTMC-reID CPU presets (seeds 0, 1, 2,
# three runs at once) on the lent H200. Data: .gpu/duke.tgz from pack_target.py (DukeMTMC-reID at
# 128x64, JPEG q70, to fit the 64 MiB transfer); source model: .gpu/source_market1501_mobilenet.pt,
# the weights of runs/source_market1501_mobilenet_cpu/checkpoints/best.pt (trainer state dropped).
# Run from the repository root as the device tool runs it: `BUDGET=520 bash benchmarks/device/m2d_seeds.sh`
# with carry [".gpu"]; results come back under $OUT as one .tgz per run.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=5
START=$SECONDS; END=$((SECONDS+${BUDGET:-540}))
{ nvidia-smi -L; python3 -c "import torch,sklearn,numpy;print(torch.__version__,sklearn.__version__,numpy.__version__)"; nproc; } > $OUT/env.txt 2>&1
R=/tmp/gpuruns
run_trio() {  # $1 method preset, $2 short name
  for s in 0 1 2; do
    ( t0=$SECONDS; left=$((END-SECONDS)); mkdir -p $R/$2_gpu_seed$s
      [ $left -lt 60 ] && exit 0
      timeout $left python3 -m adaptreid adapt --config configs/$1 -q seed=$s \
        name=$2_gpu_seed$s device=cuda data.num_workers=4 data.source_root=/nonexistent \
        data.target_root=/tmp/gpudata/data/dukemtmc adapt.init_checkpoint=.gpu/source_market1501_mobilenet.pt \
        output_dir=$R > $R.$2.$s.out 2>&1
      echo "{\"rc\": $?, \"wall_s\": $((SECONDS-t0))}" > $R/$2_gpu_seed$s/wall.json
      cp $R.$2.$s.out $R/$2_gpu_seed$s/stdout.txt
      tar -czf $OUT/$2_gpu_seed$s.tgz -C $R $2_gpu_seed$s/metrics.jsonl $2_gpu_seed$s/log.txt $2_gpu_seed$s/config.yaml $2_gpu_seed$s/wall.json $2_gpu_seed$s/stdout.txt $(cd $R && ls $2_gpu_seed$s/report.md 2>/dev/null)
    ) &
  done
  wait
}
mkdir -p $R /tmp/gpudata && tar -xzf .gpu/duke.tgz -C /tmp/gpudata
run_trio past/market1501_to_dukemtmc_cpu.yaml past_m2d
echo "past trio done at $((SECONDS-START)) s"
run_trio msplr/market1501_to_dukemtmc_cpu.yaml msplr_m2d
echo "msplr trio done at $((SECONDS-START)) s"
