/*
 * export: a source without a remote API (no plans), like analytics. Its one job, `export`
 * ([job.export], off by default), writes closed UTC days of the fact and derived tables to
 * compressed files under a directory and optionally uploads them to S3 (docs/export.md).
 *
 * The source is enabled by default so that `[job.export] enabled = true` is all it takes;
 * with the job off it does nothing.
 */
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/export/export.h"

static const struct job_def *const jobs[] = {
    &export_job,
};

const struct source_def export_source = {
    .name = "export",
    .title = "Export (closed days to files and S3)",
    .enabled_by_default = true,
    .plans = NULL,
    .nplans = 0,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
};
