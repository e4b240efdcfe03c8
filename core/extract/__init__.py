"""Flow extraction from a user's own footage: what `get_flow.py` does, without its command line.

Reading top-down, as a run happens:
- `sources`: the frames of an image pair, a folder of frames, a video or a pair list's row;
- `faces`: the sequence's one face crop (`--face_crop`), planned on sampled frames;
- `flows`: the facial, head and expression flow of each pair of consecutive frames;
- `outputs`: the names of a sequence's files, the rule for files already in `--output`, and
  writing them (every file through a temporary file and a rename);
- `sequence`: one sequence from its source to its files (`extract_sequence`);
- `pairs`: pair lists (`--pairs FILE.csv`), each row a sequence of one pair (`extract_pairs`).
"""
