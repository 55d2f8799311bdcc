# Stage 1, data: every input dataset is validated (bad rows fail with file, line
# and reason) and normalised to Parquet with a content hash in its metadata.


rule normalise_dataset:
    input:
        dataset_source_files,
    output:
        table="results/data/{dataset}.parquet",
    params:
        spec=dataset_params,
        code=script_code("normalise_dataset.py"),
    log:
        "results/logs/normalise_dataset/{dataset}.log",
    script:
        "../../scripts/normalise_dataset.py"
