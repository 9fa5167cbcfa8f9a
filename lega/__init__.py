"""lega: the ingestion side of a Local European Genome-phenome Archive node.

Files flow ``files`` -> ingest -> ``archived`` -> verify -> Central EGA
(``files.verified``) -> ``accession`` -> finalize -> ready (``files.completed``).
"""

__version__ = "0.1.0"
