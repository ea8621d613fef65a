"""General capability, as the paper checks it before and after training: IFEval-style instruction following,
GPQA-style multiple choice and AIME-style math, read from the benchmarks' own files (users bring them; nothing is
downloaded) and scored in code. Small sample sets written by this project ship under deliberate/data/capability/
for tests and smoke runs; they are not the benchmarks."""
