"""Put a tiny dataset into a local ``datasets`` cache exactly where ``load_dataset(NAME, CONFIG)``
run once online leaves it (``CACHE/<owner>___<name>/<config>/<version>/<hash>/``), so that an
offline ``datasets.load_dataset(NAME, CONFIG, split=...)`` finds it through the Hub-name path (not
``load_from_disk``). The files are written by ``datasets``' own Parquet builder, then moved to
the cache's Hub-dataset layout."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def cache_hub_dataset(cache_dir: str | Path, repo_id: str, config: str,
                      splits: dict[str, list[dict[str, Any]]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    cache_dir = Path(cache_dir)
    src = cache_dir.parent / f"src-{repo_id.replace('/', '--')}-{config}"
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(src / f"{split}.parquet")
        pq.write_table(pa.Table.from_pylist(rows), files[split])
    owner, name = repo_id.split("/")
    builder = Parquet(config_name=config, data_files=files, dataset_name=name, cache_dir=str(cache_dir))
    builder.repo_id = repo_id  # the Hub cache layout <owner>___<name>/ (set after the data-file check)
    builder._cache_dir = builder._build_cache_dir()  # noqa: SLF001
    builder.download_and_prepare()
    target = cache_dir / f"{owner}___{name}" / config / str(builder.config.version) / "0123456789abcdef"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(builder._cache_dir, target)  # noqa: SLF001 - from <config>-<data-files hash>/ to <config>/
    shutil.rmtree(src)
    return target
