#!/usr/bin/env bash
# Batch preprocessing with a pipeline config. Re-run the same command to resume after an interruption.
# Usage: data_prep/prep_pipeline.sh configs/prep/brain_t1.yaml IN OUT [--workers N] [--participants participants.tsv]
set -euo pipefail
exec ldmonai prep run "$@"
