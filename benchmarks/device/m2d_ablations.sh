#!/bin/bash
# MSPLR Table 3/4 and PAST Table 1/2 ablation rows of Market-1501 -> DukeMTMC-reID on the lent
# H200, same data pack and source model as m2d_seeds.sh; all nine at once (16 cores).
# `BUDGET=385 bash benchmarks/device/m2d_ablations.sh` with carry [".gpu"]; one .tgz comes back.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
START=$SECONDS; END=$((SECONDS+${BUDGET:-390}))
R=/tmp/gpuruns; mkdir -p $R /tmp/gpudata && tar -xzf .gpu/duke.tgz -C /tmp/gpudata
one() {  # name preset overrides...
  n=$1; p=$2; shift 2; t0=$SECONDS; mkdir -p $R/$n
  timeout $((END-SECONDS)) python3 -m adaptreid adapt --config configs/$p -q seed=0 name=$n "$@" \
    device=cuda data.num_workers=1 data.source_root=/nonexistent \
    data.target_root=/tmp/gpudata/data/dukemtmc adapt.init_checkpoint=.gpu/source_market1501_mobilenet.pt \
    output_dir=$R > $R/$n/stdout.txt 2>&1
  echo "{\"rc\": $?, \"wall_s\": $((SECONDS-t0))}" > $R/$n/wall.json
}
P=past/market1501_to_dukemtmc_cpu.yaml; M=msplr/market1501_to_dukemtmc_cpu.yaml
one past_m2d_gpu_ctl $P method.use_rtl=false method.use_promoting=false &
one past_m2d_gpu_rtl $P method.use_ctl=false method.use_promoting=false &
one past_m2d_gpu_ctl_rtl $P method.use_promoting=false &
one past_m2d_gpu_kmeans $P pseudo.method=kmeans pseudo.kmeans_k=751 &
one past_m2d_gpu_dbscan $P pseudo.method=dbscan pseudo.auto_eps=true &
one msplr_m2d_gpu_da $M adapt.max_steps=1 pseudo.select=false pseudo.camera_norm=false &
one msplr_m2d_gpu_pl $M pseudo.select=false pseudo.camera_norm=false &
one msplr_m2d_gpu_sel $M pseudo.camera_norm=false &
one msplr_m2d_gpu_kmeans $M pseudo.method=kmeans pseudo.l2_after=false &
wait
echo "all done at $((SECONDS-START)) s"
cd $R && tar -czf $OUT/ablations.tgz */metrics.jsonl */log.txt */config.yaml */wall.json */stdout.txt
