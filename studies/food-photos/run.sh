#!/bin/sh
# Pre-train on the food photos, then score the clusters against the uploader tags.
# Writes runs/food-photos (the run) and runs/food-photos/eval/clusters.{json,md}; the table in
# docs/results/food-photos-tags.md is copied from that Markdown file.
set -e
DATA=${DATA:-/work/shared/data/food-photos}
nice -n 10 deepercluster train --config studies/food-photos/pretrain.toml \
    --data "$DATA/images.tar" --out runs/food-photos --no-progress
deepercluster eval clusters --run runs/food-photos --metadata "$DATA/metadata.csv" --column tags
