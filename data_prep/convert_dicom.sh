#!/usr/bin/env bash
# Batch DICOM -> NIfTI + BIDS JSON. Re-run the same command to resume after an interruption.
# Usage: data_prep/convert_dicom.sh IN_DIR OUT_DIR [--workers N] [--template T] [--no-compress]
set -euo pipefail
exec ldmonai prep convert "$@"
