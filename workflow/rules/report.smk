# Stage 9, report: every study's headline fragment merged into
# results/headline.json, and the claims table (published vs reproduced).


rule collect_headline:
    input:
        unpack(headline_fragments),
        planted=organism_planted_input,
    output:
        headline="results/headline.json",
        claims_md="results/claims.md",
        claims_html=report("results/claims.html", category="0. Summary", labels={"table": "claims: published vs reproduced"}),
        claims="results/claims.parquet",
    params:
        run_label=config["run_label"],
        fragments=headline_fragment_names,
        models=report_models,
        planted=organism_planted(),
        code=script_code("collect_headline.py"),
    log:
        "results/logs/collect_headline.log",
    script:
        "../../scripts/collect_headline.py"
