"""Package metadata comes from settings.ini (nbdev 2): this file only reads it."""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    install_requires=cfg["requirements"].split(),
    extras_require={"dev": cfg["dev_requirements"].split()},
    # papermill's `--engine derma_jepa`: its nbclient engine with the kernel traced (17_notebooks), for the stamps
    entry_points={"nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
                  "papermill.engine": [f"derma_jepa={cfg['lib_path']}.notebooks:TracedEngine"],
                  "console_scripts": cfg.get("console_scripts", "").split()},
    zip_safe=False,
)
