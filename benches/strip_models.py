"""For benches/e2e.sh's "nomodels" job: replaces every call of the job's [models] in the SQL files
by CAST(NULL AS DOUBLE) and removes the [models] sections, so the same job runs without scoring.
    strip_models.py JOB_TOML SQL_FOLDER"""
import os, re, sys, tomllib

job_file, folder = sys.argv[1], sys.argv[2]
models = list(tomllib.load(open(job_file, "rb")).get("models", {}))


def strip(text):
    for name in models:
        while (m := re.search(rf"\b{name}\s*\(", text)):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            text = text[:m.start()] + "CAST(NULL AS DOUBLE)" + text[i:]
    return text


for f in os.listdir(folder):
    if f.endswith(".sql"):
        path = os.path.join(folder, f)
        text = strip(open(path).read())
        open(path, "w").write(text)
lines, skip = [], False
for line in open(job_file).readlines():
    if line.startswith("["):
        skip = line.startswith("[models.")
    if not skip:
        lines.append(line)
open(job_file, "w").writelines(lines)
