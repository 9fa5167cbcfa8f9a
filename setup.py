from setuptools import find_packages, setup

with open("requirements.txt") as f:
    requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
    name="lega",
    version="0.1.0",
    description="Ingestion side of a Local European Genome-phenome Archive node",
    packages=find_packages(include=["lega", "lega.*"]),
    package_data={"lega": ["schemas/*.json", "migrations/*.sql"]},
    python_requires=">=3.11",
    install_requires=requirements,
    entry_points={
        "console_scripts": [
            "ega-ingest=lega.ingest:main",
            "ega-verify=lega.verify:main",
            "ega-finalize=lega.finalize:main",
            "ega-dispatch=lega.dispatch:main",
            "ega-datasets=lega.datasets:main",
            "ega-admin=lega.admin:main",
            "ega-cega-simulator=lega.cega_simulator:main",
        ],
    },
)
