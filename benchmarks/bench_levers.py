"""The issue-6 levers for the missed targets, measured: test-time flips for denoising, and candidate models
(e.g. the lesion-healing fine-tune) for detection, against the shipped model.

    python benchmarks/bench_levers.py --sections tta
    python benchmarks/bench_levers.py --sections thick
    python benchmarks/bench_levers.py --sections detect coarse --models shipped runs/heal/model runs/heal2/model
    python benchmarks/bench_levers.py --sections opening
    python benchmarks/bench_levers.py --sections heal-adapt
    python benchmarks/bench_levers.py --sections score-scale [--cache /tmp/t2scores]
    python benchmarks/bench_levers.py --sections score-smooth [--contrasts t2 flair] [--cache /tmp/residuals]
    python benchmarks/bench_levers.py --sections cal-options --dev-healthy 32 [--cache /tmp/residuals]
    python benchmarks/bench_levers.py --sections candidates --models detector runs/detector_t2/model --dev-healthy 32 \
        [--contrasts t2 flair] [--cache /tmp/residuals] [--seed-tails none 0.01] [--test 32 10 8] \
        [--grow-grids config 99.9,99.8,99.5,99,98,97,95,93,90,85,80] [--intensity-levels scan robust] \
        [--dev-large 8] [--test-large 8] [--synthesis JSON] [--seed-block 770000]
    python benchmarks/bench_levers.py --sections combine --cache /tmp/residuals --dev-healthy 16 --test 32 10 8 \
        [--dev-large 8 --test-large 8]
    python benchmarks/bench_levers.py --sections outside --cache /tmp/residuals --dev-healthy 16 --test 32 10 8 \
        --dev-large 8 --test-large 8
    python benchmarks/bench_levers.py --sections robust-grow --cache /tmp/residuals --synthesis JSON

* tta: TCGA-DU-7294 T2 at 9 % Rician noise (the BM4D comparison input). medhdiff denoise (default steps,
  no test-time adaptation, as measured before adaptation existed) on the scan, on its left-right flip and on its anterior-posterior flip, each flipped back; PSNR/SSIM
  of each and of the averages of 2 and 3 of them (the time is the sum of the runs averaged).
* thick: test-time adaptation on a thick-slice scan. TCGA-DU-7294 T2 averaged over every 3 slices
  (1 x 1 x 3 mm), Rician noise at 5 and 9 % on that grid; `denoise` without adaptation, with it
  (recorruption noise drawn on the 3 mm grid and resampled like the scan, the shipped code), and with
  white recorruption noise on the 1 mm model grid (the naive version). PSNR/SSIM on the 3 mm grid.
* detect: threshold-free figures (AUROC, best-possible Dice, AUPRC) of each model's `detect` score
  (the model's calibrated settings and coarse stage "matched", unless --steps/--ensemble/--strengths/--coarse) on TCGA-DU-7294 FLAIR and T2, and on the project's own
  synthetic FLAIR lesion (sample_data, 2 mm); with the median intensity, in units of the normalisation
  scale, of the scan and of the mean reconstruction inside and outside the lesion. A reconstruction that
  heals brings the lesion median down to the healthy one.
* coarse: the global stage alone. The scan is pooled to the coarse grid, noised to strengths 0.3, 0.5 and
  0.7 and denoised (2 DDIM steps); medians inside and outside the tumour as above.

* opening: the grow region of `detect`'s findings opened with a ball of 1, 1.5 or 2 mm
  (`Predictor.open_region`; `detect.grow_opening_mm`) against not opened, with the shipped calibration, on
  a development set that neither training, calibration (900000+) nor the benchmarks (700000+, 710000+,
  733000+) draw: `--dev-healthy` (16) clean synthetic healthy brains per contrast (seeds 740000+) and
  `--dev-tumours` (10) synthetic tumours of 5-60 mL (seeds 740500+, 1-2 % noise), T2 and FLAIR. Per
  radius: healthy brains with a finding, the worst and mean false-positive volume, tumours reached and
  pooled Dice. The rule, fixed before it was run: the largest radius whose pooled Dice is within 0.02 of
  no opening on both contrasts, with no more healthy brains with a finding and no larger worst one.
* heal-adapt: test-time adaptation of the detection model's patch network to the scan it scores (the
  issue's "self-supervised test-time adaptation" lever, for detect). A copy is fitted for `--adapt-steps`
  (40) Adam steps (lr 1e-4, 4 windows of 32^3) on the scan itself: half the windows show one of 4
  synthetic lesions injected into the scan (`LesionInjector`, tumour 1-60 mL or focal) and must return the
  scan, as in the model's healing training (t from 50 to 150, the coarse context from the lesioned scan
  with the training's noise and blur), half show the scan as it is. Then `detect` runs with the copy at
  the shipped calibration. Inputs: TCGA-DU-7294 T2 and FLAIR, and two clean synthetic healthy T2 brains
  (733018, the bright-cortex brain of bench_healthy_fp, and 740000, a development brain). Per input: the
  found volume, the score's 99th/99.9th percentiles in the brain and, on TCGA, the Dice at the auto
  thresholds, AUROC / best Dice / AUPRC against the reference.
* score-scale: `detect.score_scale` on T2. The calibration brains of configs/detector.yaml (8 healthy,
  seeds 900000+, and 6 tumours, 900501+) and the development brains of the opening section are scored
  once, unscaled (model space, as calibration scores them); for each option (none, the scan's own mean
  score, its 50th, 75th or 90th percentile) the scores are divided, the (seed, grow, seed volume) pick is
  made as `medhdiff calibrate` makes it, and that pick is applied to the development brains: healthy
  brains with a finding and the worst, tumours reached, found / reference mL, pooled Dice. The rule, fixed
  before it was run: no more healthy brains with a finding than unscaled and no larger worst one, pooled
  Dice within 0.02 of unscaled; among those, the fewest findings, then the best Dice.
* score-smooth: `detect.score_smooth_mm` on T2 and FLAIR: the signed residual smoothed inside the brain with
  a Gaussian of 0 (shipped), 2, 4, 6 or 8 mm before its bright part is kept. Each brain of the score-scale
  section's two sets is reconstructed once (its signed residual cached); per option and contrast the scores
  are formed as `detect` forms them (`Predictor.residual_score`, then the contrast's shipped score scale),
  the pick is made as `medhdiff calibrate` makes it on the calibration brains and applied to the
  development brains. The rule, fixed before it was run, per contrast: no more healthy brains with a
  finding than unsmoothed and no larger worst one (at least 0.5 mL allowed); among those, the best pooled
  Dice if it is at least 0.02 above unsmoothed (options within 0.01 of it tie, and the smallest sigma
  wins), otherwise unsmoothed.
  Re-run for T2 with the stop-23 calibration settings (`--contrasts t2 --smooths 4 6 8 --cal-healthy 16
  --dev-healthy 32`: 16 healthy calibration brains, T2's seed volumes up to 4 mL), because 8 mm misses
  small tumours (bench_detect's size section). The rule, fixed before that run: a smaller sigma replaces
  8 mm only if it marks none of the 32 development healthy brains, its worst healthy margin stays below
  0.9, and its pooled Dice is at least 0.02 above 8 mm's (options within 0.01 of the best tie, and the
  larger sigma wins); it then ships only after held-out checks (fresh healthy brains, the size section).
* cal-options: T2's calibration set and seed grid, with the shipped 8 mm smoothing. The 8 mm pick landed on
  the edge of both seed grids (p99.999, 1 mL seeds), and a held-out healthy brain kept a finding grown from
  a 1.3 mL seed: the 8 calibration brains see the healthy tail only roughly, and the grid cannot go
  stricter. Options: shipped (8 healthy calibration brains, seed volumes 0.2/0.5/1 mL); cal16 (16 healthy
  calibration brains, 900000-900015); vol4 (seed volumes 0.2/0.5/1/2/4 mL); cal16+vol4. Each is picked as
  `medhdiff calibrate` picks and applied to the development brains (use --dev-healthy 32: healthy
  740000-740031, 10 tumours 740500+). Besides findings, each healthy brain's margin is reported: the
  highest score level at which it has a seed component of the picked seed volume, as a multiple of the
  seed threshold (below 1: no finding; the closer to 1, the nearer it came). The rule, fixed before it
  was run: options whose pooled Dice is at least the shipped one's minus 0.03 are eligible; among them the
  fewest healthy brains with a finding, then the lowest worst margin, then the best pooled Dice.
* candidates: detection models compared as each would ship (`--models detector DIR ...`; 'detector' is the
  shipped detection model). Per model and contrast (`--contrasts`), every brain is reconstructed by that model
  (cached under `--cache`/<its sha256's first 12 characters>): the calibration brains of configs/detector.yaml
  (its healthy count per contrast: T2 16, FLAIR 8; 6 tumours), the development brains (`--dev-healthy` healthy
  740000+, `--dev-tumours` tumours of 5-60 mL 740500+), `--dev-small` (8) small development tumours of 1-8 mL
  (seeds 741000+, 1-2 % noise) and TCGA-DU-7294. The pick is made as `medhdiff calibrate` makes it, with the
  shipped score settings (T2: scan-mean scale, 8 mm smoothing), and applied to the rest: healthy findings and
  margins, tumours reached and pooled Dice, the small tumours' peaks over the seed level, and the real case's
  Dice at the pick (model space). The rule, fixed before the first run (a T2-weighted fine-tune): a candidate
  replaces the shipped detector only if
  - T2: it marks no more of 32 development healthy brains than the shipped model and its worst margin stays
    below 0.9; it reaches more of the 18 development tumours (5-60 mL and 1-8 mL together), with the 5-60 mL
    pooled Dice at most 0.02 below the shipped model's;
  - FLAIR: no more healthy brains with a finding, the 5-60 mL pooled Dice within 0.02 of the shipped model's,
    and no fewer small tumours reached;
  - TCGA-DU-7294 at the pick: T2 Dice at least 0.5, FLAIR at least 0.75 (the issue's targets);
  and it ships only after `medhdiff calibrate` and bench_detect's held-out checks (healthy brains, sizes, the
  real case) confirm it.
  Seed floor (`detect.seed_tail`, `--seed-tails none 0.01`), stop 26. The T2-weighted run separated better
  but its pick sat only 5 % above its calibration brains' highest seed level, and 2 of 32 development brains
  crossed it. The floor keeps every seed threshold at least at the level a new healthy brain's highest seed
  level exceeds with probability 0.01, by a Gumbel fit (moments) to the 16 calibration brains' own levels
  for that seed volume. The tail 0.01 was fixed before any floor was computed: a healthy finding grows from
  a seed of at least the seed volume to some tens of mL, so one brain in a hundred keeps the mean healthy
  false-positive volume near the calibration budget of 0.5 mL. It is measured on held-out brains no
  earlier run has seen (`--test 32 10 8`: 32 clean healthy 742000-742031, 10 tumours of 5-60 mL 742500+,
  8 of 1-8 mL 743000+), because the development brains already informed this idea. The rule, fixed before
  that run:
  - the floor enters `medhdiff calibrate` for T2 (configs/detector.yaml `seed_tail: {t2: 0.01}`) if, for the
    shipped detection model, it marks no more test healthy brains than without it and reaches no fewer of
    the 18 test tumours (then its T2 calibration is redone);
  - the T2-weighted run with the floor replaces the shipped detection model only if, on the test brains,
    it marks no more healthy brains than the shipped model as it would ship, reaches more of the 18
    tumours, its 5-60 mL pooled Dice is at most 0.02 below, and TCGA-DU-7294 T2 Dice at its pick is at
    least 0.5; then FLAIR must pass the rule above, and `medhdiff calibrate` and bench_detect's held-out
    checks must confirm it.
  Grow grid (`--grow-grids`), stop 27. With the T2-weighted run shipped, both its T2 and FLAIR picks grow to
  p99.5, the top of `detect.grow_percentiles` (the edge of the grid, as T2's seed pick was at stop 23), and
  its T2 findings over-grow: 358 mL found for 222 mL of the 7 development tumours reached, 49.5 mL for 24.2 on
  TCGA-DU-7294, whose seeds alone score Dice 0.83 there (bench_detect). The idea came from that real case;
  the choice is made on synthetic brains. Option: grow percentiles 99.9 and 99.8 added above the grid
  (`--grow-grids 99.9,99.8,99.5,99,98,97,95,93,90,85,80`, only pairs with the grow percentile below the seed
  one, as always). The rule, fixed before the run, per contrast: the extended grid replaces the shipped one
  if on the development brains (T2: 32 healthy, FLAIR: 16; 10 tumours of 5-60 mL, 8 of 1-8 mL) and, for T2,
  the test brains, it marks no more healthy brains, reaches no fewer tumours (5-60 and 1-8 mL together), and
  its development 5-60 mL pooled Dice is at least 0.02 higher; TCGA-DU-7294 must stay at the issue's targets
  (T2 0.5, FLAIR 0.75). Then the contrast is recalibrated (`medhdiff calibrate --contrast`).
  T2 then picked p99.9, the top of its new grid (shipped, `detect.grow_percentiles_by_contrast`). The next
  step up, measured under the same rule against that grid: `--grow-grids
  99.98,99.95,99.9,99.8,99.5,99,98,97,95,93,90,85,80 --contrasts t2` (grow levels stay below the seed
  percentile p99.999, and the seed threshold itself is the floor's 6.04).
  Intensity grow level (`--intensity-levels scan robust`, `detect.grow_intensity_level`), stop 28. FLAIR grows
  through the scan's own bright voxels above its p98 (`Predictor.bright_regions`). On BraTS-example's FLAIR (no
  reference segmentation) `detect` found 26.8 mL of a hyperintensity of roughly 80-110 mL (median + 3-4 MAD),
  and FLAIR findings on the development tumours above 35 mL fall short (51.3 mL -> 32.5, 38.6 -> 20.2): a large
  tumour fills the scan's upper tail itself, so its empirical p98 climbs into the tumour. Option 'robust': the
  percentile of a normal fitted to the scored region by median and MAD. The idea came from that real scan; the
  choice is made on synthetic brains, with large tumours added (`--dev-large 8`: 60-150 mL, seeds 744000+;
  `--test-large 8`: 745000+). The rule, fixed before the run, per contrast: 'robust' replaces 'scan' only if
  - on the development brains (FLAIR 16 healthy, T2 32; 10 of 5-60 mL, 8 of 1-8 mL, 8 of 60-150 mL) it marks
    no more healthy brains and no larger worst volume, reaches no fewer tumours (the three sets together), its
    5-60 mL pooled Dice is at most 0.02 below 'scan' and its 60-150 mL pooled Dice at least 0.05 above;
  - on the test brains (`--test 32 10 8 --test-large 8`) it marks no more healthy brains, reaches no fewer
    tumours, its 5-60 mL pooled Dice is at most 0.02 below and its 60-150 mL pooled Dice above 'scan';
  - TCGA-DU-7294 at the pick stays at the issue's target (FLAIR 0.75, T2 0.5).
  A contrast whose pick takes no intensity region under either level is unchanged. A contrast that passes is
  recalibrated (`medhdiff calibrate --contrast`) and ships only after bench_detect's held-out checks (healthy
  brains, sizes, the real case).
* combine: how `detect --t1/--t2/--flair` joins one subject's contrasts (`Predictor.combine_findings`). Stop 28:
  `detect --t2 --flair` scored TCGA-DU-7294 at 0.743, below FLAIR alone (0.823), because T2's findings over-grow
  (38.3 mL for 24.2) and the union keeps them. Options: 'union' (shipped), 'consensus' (seeds from any contrast,
  grown only through voxels every contrast's grow region holds) and 'lead' (the contrast of best calibrated
  synthetic-tumour Dice keeps its findings; another's join only where they touch none of them). A seed draws
  the same brain and tumour in every contrast, so the candidates section's cached T2 and FLAIR brains pair up;
  nothing is reconstructed here (every brain must be in `--cache`). Each contrast at the shipped detection
  model's calibration. The rule, fixed before the run: an option replaces 'union' as the default only if on the
  development brains (16 healthy 740000+, 10 tumours of 5-60 mL 740500+, 8 of 1-8 mL 741000+) it marks no more
  healthy brains, reaches no fewer of the 18 tumours and its 5-60 mL pooled Dice is at least 0.02 above
  'union''s (among those the best; options within 0.01 tie and 'consensus', which ranks no contrast, wins a
  tie), and on the test brains (32 healthy 742000+, 10 tumours 742500+, 8 small 743000+) it marks no more
  healthy brains, reaches no fewer tumours and its 5-60 mL pooled Dice is no lower. TCGA-DU-7294 is reported,
  not a criterion. Consensus passed and is the default. Then, because on BraTS-example (no reference) the
  consensus of T2 and FLAIR found 33.2 mL where T2 alone found 66.3, the large tumours were added as a
  disclosure, not a criterion (`--dev-large 8 --test-large 8`: 60-150 mL, paired as above).
  Calibration brains drawn like real tissue (`--synthesis`, `detect.calibration_synthesis`), stop 29. Every real
  FLAIR's healthy tissue spreads further above its median than any FLAIR calibration brain's (bench_detect's
  tissue section: p98 2.08-2.63 robust SDs against 1.06-1.68), so levels calibrated on those brains land inside
  real healthy tissue ('robust' and 'outside' over-grew TCGA-DU-7294). Option: FLAIR brains drawn with a
  narrower grey-white gap and a stronger texture (`{"texture_amplitude": [0.06, 0.12], "tissue_ratios": {"wm":
  [0.8, 0.9]}}`), the closest of 8 generator settings tried to the healthy halves of BraTS-example and
  AURORA-example (p98 1.77-2.42, against 2.47 and 2.63; TCGA-DU-7294, 2.08, was seen too). Every brain of the
  section (calibration, development, test) is drawn that way; the shipped calibration's pick is applied to the
  same brains as the baseline. Run: `--sections candidates --models detector --contrasts flair --dev-healthy 16
  --dev-large 8 --test 32 10 8 --test-large 8 --intensity-levels scan robust --synthesis '{...}'`. The rule,
  fixed before the run: a recalibrated FLAIR pick (level 'scan' or 'robust') replaces the shipped one only if
  - development (16 healthy, 10 of 5-60 mL, 8 of 1-8 mL, 8 of 60-150 mL, all drawn that way): no more healthy
    brains with a finding than the shipped pick and no larger worst one, no fewer tumours reached (the three
    sets together), the 5-60 mL pooled Dice at most 0.02 below the shipped pick's and the 60-150 mL pooled Dice
    at least 0.05 above;
  - test (32, 10, 8, 8): no more healthy brains with a finding, no fewer tumours reached, the 5-60 mL pooled
    Dice at most 0.02 below, the 60-150 mL pooled Dice above;
  - TCGA-DU-7294 FLAIR at the pick: Dice at least 0.75.
  Among those that pass, the best development 60-150 mL Dice (within 0.01: 'scan'). It then ships as
  `detect.calibration_synthesis` for FLAIR in configs/detector.yaml and a FLAIR recalibration (`medhdiff
  calibrate --contrast flair`), after bench_detect's held-out checks (healthy brains, the real case, sizes).
  Reported, not criteria: BraTS-example's and AURORA-example's found volumes.
  Result: neither ships. Both recalibrated picks lose one development tumour (58 mL, whose largest component
  above the higher seed threshold, 0.180 against 0.163, is 0.72 mL, under the 1 mL seed volume), so they reach
  22 of 26 development tumours against the shipped pick's 23; 'scan' also gains only 0.037 on the 60-150 mL
  tumours. 'robust' passes every other condition (60-150 mL Dice 0.637 -> 0.837 and 0.603 -> 0.840, no healthy
  brain marked where the shipped pick marks 1 of 16 and 1 of 32, TCGA-DU-7294 0.803).
* outside: FLAIR's intensity grow level taken outside the findings (`detect.grow_intensity_level: outside`),
  stop 29. Under 'scan' a large tumour fills the scan's own upper tail and lifts p98 into itself (45 % of
  60-150 mL synthetic tumours found; 26.8 mL of BraTS-example's ~123 mL hyperintensity); 'robust' (a normal
  fit) fixed that on synthetic brains but over-grew the real FLAIR (0.427), whose healthy tail is heavier than
  a normal's. 'outside' keeps the scan's own empirical percentile but takes it over the scored region less the
  findings, and iterates (findings at the scan level; the percentile again outside them; findings regrown; until
  they stop changing, at most `OUTSIDE_ROUNDS`): a scan without findings keeps the scan level exactly, so no
  healthy brain can gain a finding, and the level a lesion leaves is the healthy tissue's own tail, heavy or
  not. The shipped FLAIR pick (seed, grow and intensity percentiles, seed volume) is kept; only the level
  changes. Nothing is reconstructed: the cached brains of the candidates section are prepared again for their
  filtered intensity (cached under `filtered/`). The rule, fixed before the run: 'outside' replaces 'scan' for
  FLAIR only if
  - development (16 healthy, 10 of 5-60 mL, 8 of 1-8 mL, 8 of 60-150 mL): no more healthy brains with a
    finding, no fewer tumours reached (the three sets together), the 5-60 mL and 1-8 mL pooled Dice each at
    most 0.02 below 'scan''s, the 60-150 mL pooled Dice at least 0.05 above;
  - test (32 healthy, 10, 8 and 8 tumours): the same, with the 60-150 mL pooled Dice above 'scan''s;
  - TCGA-DU-7294 FLAIR at the pick keeps the issue's target, Dice at least 0.75.
  Reported, not criteria: the `--t2 --flair` consensus on the paired brains and the real case, and, in
  bench_detect's unreferenced section afterwards, the volumes found on BraTS-example and AURORA-example.
* candidates on fresh seeds (`--seed-block`, `use_seed_block`), stop 30. Stop 29's realistic-tissue 'robust'
  FLAIR recalibration failed its rule by one development tumour (22 of 26 reached against the shipped pick's
  23) and passed every other condition; those brains have now been seen. First, on them (now development data
  for this choice) and an ad-hoc script using this module's `_pick`/`_apply`, the score options were explored
  with the robust level (calibration brains drawn the same way; seen sets 16/10/8/8 and 32/10/8/8, reached of
  26 each, healthy brains with a finding, 60-150 mL pooled Dice, TCGA-DU-7294 FLAIR):
  unscaled, 8 calibration brains 22 / 25, 0 / 0, 0.837 / 0.840, 0.803; 16 calibration brains 22 / 25, 1 / 0,
  0.825 / 0.816, 0.859; scan-mean scale 20 / 25, 0 / 0, 0.825 / 0.816, 0.859; scan-median scale: the pick
  falls back to the most conservative pair (calibration Dice 0.20); residual smoothed 2 mm 20 / 25, 1 / 0,
  0.816 / 0.806, 0.849; 4 mm 20 / 25, 1 / 0, 0.780 / 0.767, 0.772. None reaches more tumours; the candidate
  stays stop 29's (robust, unscaled, unsmoothed, 8 calibration brains). It is tested again on fresh brains no
  run has drawn (block 770000: development 16 healthy, 10 of 5-60 mL, 8 of 1-8 mL, 8 of 60-150 mL; test 32,
  10, 8, 8; all drawn with the stop-29 synthesis), against the shipped pick on the same brains. A second test
  of a candidate that failed once must not forgive the first failure, so the rule, fixed before the run,
  pools the stop-29 brains with the fresh ones where the candidate failed: it replaces the shipped FLAIR pick
  only if
  - tumours reached, over stop 29's three development sets and the fresh block's six tumour sets together:
    no fewer than the shipped pick (so the fresh brains must make up the tumour lost at stop 29);
  - fresh development and fresh test, each: no more healthy brains with a finding than the shipped pick and
    no larger worst one; the 5-60 mL pooled Dice at most 0.02 below the shipped pick's; the 60-150 mL pooled
    Dice at least 0.05 above (development) and above (test);
  - TCGA-DU-7294 FLAIR at the pick: Dice at least 0.75 (0.803 at stop 29; the same pick gives the same mask).
  Then `detect.calibration_synthesis` and `grow_intensity_level: robust` for FLAIR go into configs/detector.yaml,
  FLAIR is recalibrated (`medhdiff calibrate --contrast flair`), and it ships only if bench_detect's held-out
  checks confirm it: no healthy false-positive volume of 2 mL or more on its healthy scans, TCGA-DU-7294 FLAIR
  at least 0.75. Reported, not criteria: BraTS-example's and AURORA-example's found volumes (each row's
  `unreferenced`), and the 1-8 mL Dice.
  Result: it does not ship. On the fresh brains it gives up small tumours: 1-8 mL reached 4 of 8 and 4 of 8
  against the shipped pick's 5 and 6, so over stop 29's and the fresh sets it reaches 65 tumours against 69.
  Every other condition passes: healthy brains with a finding 0 of 16 and 0 of 32 (shipped 0 and 1, 2.6 mL),
  5-60 mL Dice 0.759 / 0.840 (shipped 0.717 / 0.817), 60-150 mL 0.828 / 0.857 (0.582 / 0.666), TCGA-DU-7294
  0.803. Reported: BraTS-example 135.6 mL found (shipped 26.8; crude hyperintensity 122.6), AURORA-example
  45.6 (28.7; crude 19.0). The higher seed threshold (0.180 against 0.163) that keeps realistic healthy
  brains clean is what costs the faint and small tumours.
* robust-grow: the shipped FLAIR seeds kept, only the intensity grow region moved to the robust level (stop 30,
  exploration, not a test: every brain it reads has been seen). The fresh-seed test above showed that what the
  realistic-tissue recalibration gains comes from its robust intensity level and what it loses from its higher
  seed threshold, so this section separates them: the shipped seed threshold, seed volume and score grow level,
  with the scan's p98 (shipped) or the robust level's p99.5, p99, p98 or p97 as the intensity region, on every
  cached FLAIR brain drawn with `--synthesis` (stop 29's sets and the block 770000 sets). Seeds decide whether
  a brain has a finding, so healthy brains with a finding and tumours reached are the shipped pick's; volumes
  and Dice change. Run: `--sections robust-grow --cache /tmp/residuals --synthesis '{...}'` (no reconstruction).
  A choice among these percentiles must be made on calibration brains and tested on a fresh block.

Results go to benchmarks/results/levers.json (each section replaced when re-run); make_results.py adds
them to RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from medhdiff.training.config import INTENSITY_LEVELS

from common import (CASES, RESULTS_DIR, ROOT, TUMOUR, TumourTally, add_rician, machine, measure, noise_seed,
                    opening_summary, pick_label, require_data, save_results)

CASE = "TCGA-DU-7294"
VOXEL_ML = 0.001  # model space is 1 mm


def _model(spec: str, coarse: str = "matched"):
    from medhdiff.tasks import Predictor

    return Predictor(None if spec == "shipped" else spec, device="cpu", coarse_timestep=coarse)


def tta(console: Console) -> list[dict]:
    from medhdiff.io import Volume, load_volume
    from medhdiff.metrics import psnr, ssim

    pred = _model("shipped")
    vol = load_volume(TUMOUR / CASE / CASES[CASE]["t2"])
    x = np.nan_to_num(vol.data.astype(np.float32))
    brain = x != 0
    rng_ = float(x[brain].max() - x[brain].min())
    y, _ = add_rician(x, brain, 0.09, noise_seed(CASE, "t2", 0.09))
    outs, secs, rows = [], [], []
    for name, axis in (("as is", None), ("left-right flip", 0), ("anterior-posterior flip", 1)):
        yy = y if axis is None else np.flip(y, axis).copy()
        with measure() as m:
            r = pred.denoise(Volume(yy, vol.affine, vol.header), contrast="t2", adapt=0)
        outs.append(r.image if axis is None else np.flip(r.image, axis))
        secs.append(m.seconds)
        rows.append({"input": name, "steps": r.steps, "psnr": round(psnr(outs[-1], x, brain, data_range=rng_), 3),
                     "ssim": round(ssim(outs[-1], x, brain, data_range=rng_), 4), "seconds": round(m.seconds, 1)})
        console.print(rows[-1])
    for k in (2, 3):
        avg = np.mean(outs[:k], axis=0)
        rows.append({"input": f"average of {k}", "steps": rows[0]["steps"],
                     "psnr": round(psnr(avg, x, brain, data_range=rng_), 3),
                     "ssim": round(ssim(avg, x, brain, data_range=rng_), 4), "seconds": round(sum(secs[:k]), 1)})
        console.print(rows[-1])
    return rows


def thick(console: Console) -> list[dict]:
    import medhdiff.tasks.predictor as predictor_module
    from medhdiff.io import Volume, load_volume
    from medhdiff.metrics import psnr, ssim

    pred = _model("shipped")
    vol = load_volume(TUMOUR / CASE / CASES[CASE]["t2"])
    x = np.nan_to_num(vol.data.astype(np.float32))
    n = x.shape[2] // 3 * 3
    x3 = x[:, :, :n].reshape(x.shape[0], x.shape[1], n // 3, 3).mean(-1)  # a 3 mm slab per 3 slices
    aff = vol.affine.copy()
    aff[:3, 2] *= 3
    brain = x3 > 0.05 * np.percentile(x3[x3 > 0], 99)
    x3 = np.where(brain, x3, 0).astype(np.float32)
    rng_ = float(x3[brain].max() - x3[brain].min())
    shipped = predictor_module.adapt_patch_model

    def white(*a, **k):  # the naive recorruption: white noise on the 1 mm model grid
        return shipped(*a, **{**k, "noise_fields": None})

    rows = []
    try:
        for level in (0.05, 0.09):
            y, _ = add_rician(x3, brain, level, noise_seed(CASE, "t2-3mm", level))
            for name, adapt, fn in (("no adaptation", 0, shipped), ("adapt 20, noise resampled like the scan", 20, shipped),
                                    ("adapt 20, white noise on the model grid", 20, white)):
                predictor_module.adapt_patch_model = fn
                with measure() as m:
                    r = pred.denoise(Volume(y, aff), contrast="t2", adapt=adapt)
                rows.append({"input": f"T2 1x1x3 mm, {level:.0%}", "method": name,
                             "psnr": round(psnr(r.image, x3, brain, data_range=rng_), 3),
                             "ssim": round(ssim(r.image, x3, brain, data_range=rng_), 4), "seconds": round(m.seconds, 1)})
                console.print(rows[-1])
    finally:
        predictor_module.adapt_patch_model = shipped
    return rows


def _inputs():
    from medhdiff.io import load_volume

    seg = load_volume(TUMOUR / CASE / "seg_consensus.nii.gz").data > 0
    for fname, contrast in (("fla", "flair"), ("t2", "t2")):
        yield f"{CASE} {contrast}", contrast, load_volume(TUMOUR / CASE / f"{fname}.nii.gz"), seg
    sample = ROOT / "sample_data"
    yield ("sample_data synthetic FLAIR lesion", "flair", load_volume(sample / "synth_flair_lesion.nii.gz"),
           load_volume(sample / "synth_flair_lesion_mask.nii.gz").data > 0)


def detect(models: list[str], console: Console, args) -> list[dict]:
    from bench_detect import localisation

    rows = []
    for spec in models:
        pred = _model(spec, args.coarse)
        for name, contrast, vol, lesion in _inputs():
            brain = vol.data != 0
            with measure() as m:
                r = pred.detect(vol, ensemble=args.ensemble, strengths=tuple(args.strengths or ()) or None,
                                steps=args.steps, contrast=contrast)
            scale = pred.prepare(vol).record.norm.scale
            med = lambda a, sel: round(float(np.median(a[sel])) / scale, 3)  # noqa: E731
            rows.append({"model": spec, "sha256": pred.sha256[:12], "input": name,
                         **localisation(r.score_map[brain], lesion[brain]),
                         "scan_lesion": med(vol.data, lesion), "scan_healthy": med(vol.data, brain & ~lesion),
                         "recon_lesion": med(r.reconstruction, lesion),
                         "recon_healthy": med(r.reconstruction, brain & ~lesion),
                         "settings": {**{k: r.report[k] for k in ("ensemble", "strengths", "steps", "polarity")},
                                      "coarse": args.coarse},
                         "seconds": round(m.seconds, 1)})
            console.print(rows[-1])
    return rows


def coarse(models: list[str], console: Console) -> list[dict]:
    import torch

    from medhdiff.diffusion.sampler import downsample

    rows = []
    for spec in models:
        pred = _model(spec)
        for name, contrast, vol, lesion in list(_inputs())[:2]:
            prep = pred.prepare(vol)
            f = pred.cfg.coarse_factor
            pool = lambda a: downsample(pred._tensor(a.astype(np.float32)), f)  # noqa: E731
            les = pool(pred.preprocessor.to_model(lesion.astype(np.float32), prep.record, kind="mask"))[0, 0].numpy() > 0.5
            brain = pool(prep.mask)[0, 0].numpy() > 0.5
            xc = pool(prep.image)
            row = {"model": spec, "input": name, "pooled_scan": [round(float(np.median(xc[0, 0].numpy()[les])), 3),
                                                                  round(float(np.median(xc[0, 0].numpy()[brain & ~les])), 3)]}
            for strength in (0.3, 0.5, 0.7):
                t = int(round(strength * (pred.schedule.num_train_timesteps - 1)))
                g = torch.Generator().manual_seed(0)
                x_t = pred.schedule.add_noise(xc, torch.randn(xc.shape, generator=g), t)
                rec = pred.sampler.sample_coarse(pred.bundle.global_model, x_t, t, 2, pred.class_label(contrast))[0, 0]
                rec = rec.numpy()
                row[f"strength_{strength}"] = [round(float(np.median(rec[les])), 3),
                                               round(float(np.median(rec[brain & ~les])), 3)]
            rows.append(row)
            console.print(row)
    return rows


OPENING_RADII = (0.0, 1.0, 1.5, 2.0)
DEV_SEED = 740_000


def opening(console: Console, n_healthy: int, n_tumours: int) -> list[dict]:
    from bench_detect import healthy_synthetic, synthetic_tumours

    from medhdiff.metrics import dice
    from medhdiff.tasks import Predictor

    pred = Predictor(None, device="cpu", model="detector")
    if pred.bundle.meta.get("calibration", {}).get("grow_opening_mm"):
        sys.exit("error: the opening section compares against no opening; its model already opens")

    def cases(contrast):
        for i in range(n_healthy):
            vol, brain = healthy_synthetic(contrast, i, first=DEV_SEED)
            yield DEV_SEED + i, vol, brain, None
        yield from synthetic_tumours(contrast, DEV_SEED + 500, n_tumours, (0.01, 0.02), (5.0, 60.0))

    rows = []
    for contrast in ("t2", "flair"):
        for seed, vol, brain, lesion in cases(contrast):
            with measure() as m:
                score, _, st, grow = pred._score(vol, threshold="auto", ensemble=None, strengths=None, steps=None,
                                                 mask=brain, contrast=contrast, polarity="auto", seed=0)
            min_ml = pred._min_volume(None, contrast)
            for r in OPENING_RADII:
                g = Predictor.open_region(grow, vol.spacing, r) if grow is not None else None
                keep = Predictor._findings(score, st["threshold"], vol.voxel_volume_ml, min_ml, g)
                row = {"contrast": contrast, "seed": seed, "kind": "healthy" if lesion is None else "tumour",
                       "radius_mm": r, "found_ml": round(float(keep.sum()) * vol.voxel_volume_ml, 3),
                       "seconds": round(m.seconds, 1)}
                if lesion is not None:
                    row.update(reference_ml=round(float(lesion.sum()) * vol.voxel_volume_ml, 2),
                               intersection=int((keep & lesion).sum()), sizes=int(keep.sum() + lesion.sum()),
                               dice=round(dice(keep, lesion), 4))
                rows.append(row)
            console.print({k: rows[-1][k] for k in ("contrast", "seed", "kind")},
                          [rw["found_ml"] for rw in rows[-len(OPENING_RADII):]])
    for r in opening_summary(rows):
        console.print(f"{r['contrast']} opening {r['radius_mm']} mm: healthy {r['healthy_with_finding']}/{r['healthy']} "
                      f"with a finding, worst {r['worst_healthy_ml']:.2f} mL; tumours reached "
                      f"{r['tumours_reached']}/{r['tumours']}, pooled Dice {r['pooled_dice']:.3f}")
    return rows


SCALES = ("none", "mean", "p50", "p75", "p90")


def score_scale(console: Console, n_healthy: int, n_tumours: int, cache: Path | None,
                contrast: str = "t2") -> list[dict]:
    """Each ``detect.score_scale`` option calibrated as ``medhdiff calibrate`` would (configs/detector.yaml's
    detect settings and calibration brains), then scored on the development brains."""
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    cfg = load_config(ROOT / "configs" / "detector.yaml")
    d = cfg.detect
    pred = Predictor(None, device="cpu", model="detector")
    polarity = "bright" if contrast in ("t2", "flair") else "both"
    cal, dev = _brain_sets(console, pred, cfg, contrast, n_healthy, n_tumours, cache)
    for item in (*cal, *dev):  # unscaled, as calibration scores them
        item["score"] = Predictor.residual_score(list(item["residual"]), item["mask"], polarity)
    rows = []
    for how in SCALES:
        row = _pick_and_apply(cal, dev, d.for_contrast(contrast), d.healthy_volumes, n_healthy,
                              lambda item: Predictor.scale_score(item["score"], item["inner"], how)[0])
        rows.append(row := {"contrast": contrast, "score_scale": how, **row})
        console.print(row)
    return rows


def _brain_sets(console: Console, pred, cfg, contrast: str, n_healthy: int, n_tumours: int,
                cache: Path | None, scored=None, levels=(), synthesis: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The calibration brains of ``cfg`` (healthy 900000+, then tumours 900501+, as ``medhdiff calibrate`` draws
    them) and the development brains (``n_healthy`` healthy 740000+, then ``n_tumours`` tumours 740500+), each
    reconstructed once by ``pred`` (cached per brain under ``cache``): items with the signed ``residual``s, the
    model-space ``mask``, ``inner`` (scored region), ``ref`` (the tumour) and ``bright`` (intensity regions).
    The calibration brains are drawn with the config's ``detect.calibration_synthesis``, the development
    brains with ``synthesis``."""
    from bench_detect import healthy_synthetic, synthetic_tumours

    from medhdiff.synth import HealthyBrainGenerator, load_builtin_labelmap
    from medhdiff.training.calibrate import LESION_ML

    d = cfg.detect
    labels, affine = load_builtin_labelmap()

    def calibration_brains():
        gen = HealthyBrainGenerator(contrast=contrast, spacing=1.0, noise_range=cfg.data.noise_range,
                                    **d.synthesis(contrast))
        for i in range(d.healthy_volumes):
            res = gen.generate(labels, affine, seed=900_000 + i)
            yield "calh", 900_000 + i, res.image, res.affine, res.brain_mask > 0, None
        for s, vol, brain, lesion in synthetic_tumours(contrast, 900_501, d.lesion_volumes, cfg.data.noise_range,
                                                       LESION_ML, d.synthesis(contrast)):
            yield "calt", s, vol.data, vol.affine, brain, lesion

    def development_brains():
        for i in range(n_healthy):
            vol, brain = healthy_synthetic(contrast, i, first=SET_STARTS["devh"], synthesis=synthesis)
            yield "devh", SET_STARTS["devh"] + i, vol.data, vol.affine, brain, None
        for s, vol, brain, lesion in synthetic_tumours(contrast, SET_STARTS["devt"], n_tumours, (0.01, 0.02), (5.0, 60.0),
                                                       synthesis):
            yield "devt", s, vol.data, vol.affine, brain, lesion

    return (_reconstructed(console, pred, d, contrast, calibration_brains(), cache, scored, levels),
            _reconstructed(console, pred, d, contrast, development_brains(), cache, scored, levels))


def _reconstructed(console: Console, pred, d, contrast: str, brains, cache: Path | None, scored=None,
                   levels=()) -> list[dict]:
    """Each brain ``(tag, seed, image, affine, brain mask or None, lesion or None)`` reconstructed once by ``pred``
    with the detect settings ``d`` (cached per brain under ``cache``). With ``scored`` (:func:`_scorer`), each
    brain's score map is formed as it comes and its residuals dropped: a section that reads only that map
    then holds one brain's residuals at a time, not all of them (16.6 GB for 123 T2 brains). ``levels`` names
    intensity grow levels besides ``"scan"`` (``Predictor.bright_regions``): each brain's regions at those are
    kept in ``item["bright_by_level"]`` (cached in a subfolder per level, ``bright_<level>/``, apart from the
    residual files other sections glob; a cached brain is prepared again, not reconstructed, to form them)."""
    from medhdiff.io import Volume
    from medhdiff.tasks import Predictor

    label = pred.class_label(contrast)
    out = []
    for tag, s, image, aff, brain, lesion in brains:
        by_level = {}
        for level in (lv for lv in levels if lv != "scan"):
            side = None if cache is None else cache / f"bright_{level}" / f"{contrast}_{tag}_{s}.npz"
            if side is not None and side.is_file():
                with np.load(side) as z:
                    stored = {float(k): z[k] for k in z.files}
                if set(map(float, d.grow_intensity_percentiles)) <= set(stored):  # else formed again
                    by_level[level] = stored
                    continue
            prep = pred.prepare(Volume(image, aff), mask=brain)
            by_level[level] = Predictor.bright_regions(prep.image, prep.mask, d.grow_intensity_percentiles, level)
            if side is not None:
                side.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(side, **{str(k): v for k, v in by_level[level].items()})
        path = None if cache is None else cache / f"{contrast}_{tag}_{s}.npz"
        if path is None or not path.is_file():
            with measure() as m:
                prep = pred.prepare(Volume(image, aff), mask=brain)
                res, _ = pred.residuals(prep, label=label, ensemble=d.ensemble, strengths=d.strengths,
                                        steps=d.steps, seed=s)
            ref = (np.zeros(1, bool) if lesion is None else
                   pred.preprocessor.to_model(lesion.astype(np.float32), prep.record, kind="mask") > 0)
            bright = Predictor.bright_regions(prep.image, prep.mask, d.grow_intensity_percentiles)
            item = {"residual": np.stack(res).astype(np.float32), "mask": prep.mask, "ref": ref,
                    **{f"bright{k}": v for k, v in bright.items()}}
            if path is not None:
                cache.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, **item)
            console.print(f"{contrast} {tag} {s}: reconstructed in {m.seconds:.0f} s")
        else:
            with np.load(path) as z:
                item = {k: z[k] for k in z.files}
        item["bright"] = {float(k[6:]): v for k, v in item.items() if k.startswith("bright") and k != "bright"}
        item["bright_by_level"] = {"scan": item["bright"], **by_level}
        item["inner"] = Predictor.scored_region(item["mask"])
        if scored is not None:
            scored(item)
            del item["residual"]
        out.append(item)
    return out


def _scorer(d, contrast: str, smooth_mm: float | None = None, key: str = "score"):
    """``scored(item)``: a brain's score map formed from its signed residuals as ``detect`` forms it (the
    contrast's polarity, ``d``'s score scale and smoothing, or ``smooth_mm``), kept in ``item[key]`` because
    each map serves the pick and again the scoring."""
    from medhdiff.tasks.predictor import BRIGHT_LESION_CONTRASTS, Predictor

    polarity = "bright" if contrast in BRIGHT_LESION_CONTRASTS else "both"
    scale = d.score_scale.get(contrast, "none")
    mm = d.score_smooth_mm.get(contrast, 0.0) if smooth_mm is None else smooth_mm

    def scored(item: dict) -> np.ndarray:
        if key not in item:
            sc = Predictor.residual_score(list(item["residual"]), item["mask"], polarity, mm)
            item[key] = Predictor.scale_score(sc, item["inner"], scale)[0]
        return item[key]

    return scored


def _pick(cal: list[dict], d, n_cal_healthy: int, scored, seed_tail: float | None = None) -> dict:
    """The (seed, grow, seed volume, intensity) pick made as ``medhdiff calibrate`` makes it on the calibration
    brains ``cal`` (healthy first). Each item has ``inner``, ``mask``, ``ref`` and ``bright`` (model space,
    1 mm); ``scored(item)`` gives its score map; ``seed_tail`` is the contrast's ``detect.seed_tail``."""
    from medhdiff.training.calibrate import _pick_hysteresis

    cal_h, cal_t = cal[:n_cal_healthy], cal[n_cal_healthy:]
    healthy = [scored(c) for c in cal_h]
    values = np.concatenate([h[c["inner"]] for h, c in zip(healthy, cal_h)])
    return _pick_hysteresis(values, healthy, [(scored(c), c["ref"] & c["inner"]) for c in cal_t], d, VOXEL_ML,
                            [c["bright"] for c in cal_h], [c["bright"] for c in cal_t], seed_tail)


def _found(pick: dict, item: dict, scored) -> np.ndarray:
    """The mask ``detect`` forms from ``pick`` on one brain (model space)."""
    from medhdiff.tasks import Predictor

    sc = scored(item)
    grow = sc > pick["grow_threshold"]
    q = pick["grow_intensity_percentile"]
    if q is not None:
        grow |= item["bright"][q]
    return Predictor._findings(sc, pick["threshold"], VOXEL_ML, pick["seed_min_volume_ml"], grow) & item["mask"]


def _apply(pick: dict, dev: list[dict], n_dev_healthy: int, scored) -> dict:
    """``pick`` applied to the development brains ``dev`` (healthy first): healthy findings and margins, the
    tumours pooled."""
    dev_h, dev_t = dev[:n_dev_healthy], dev[n_dev_healthy:]
    fp = [float(_found(pick, c, scored).sum()) * VOXEL_ML for c in dev_h]
    margins = [_seed_margin(scored(c), pick["threshold"], VOXEL_ML, pick["seed_min_volume_ml"]) for c in dev_h]
    tally = TumourTally()
    for c in dev_t:
        tally.add(_found(pick, c, scored), c["ref"], VOXEL_ML)
    return {"healthy": len(fp), "healthy_with_finding": sum(v > 0 for v in fp),
            "worst_healthy_ml": round(max(fp, default=0.0), 2),
            "mean_healthy_ml": round(float(np.mean(fp)) if fp else 0.0, 3),
            "worst_healthy_margin": round(max(margins, default=0.0), 3), "healthy_margins_top3": sorted(
                (round(m, 3) for m in margins), reverse=True)[:3],
            "tumours": len(dev_t), "tumours_reached": tally.reached,
            "found_ml": round(tally.found_ml, 1), "reference_ml": round(tally.reference_ml, 1),
            "pooled_dice": round(tally.pooled_dice, 3)}


def _pick_and_apply(cal: list[dict], dev: list[dict], d, n_cal_healthy: int, n_dev_healthy: int, scored) -> dict:
    """:func:`_pick` on the calibration brains, :func:`_apply` on the development brains: one row."""
    pick = _pick(cal, d, n_cal_healthy, scored)
    return {"pick": pick_label(pick), "calibration_dice": pick["dice"], "useful": pick.get("useful", True),
            **_apply(pick, dev, n_dev_healthy, scored)}


def _seed_margin(score: np.ndarray, threshold: float, voxel_ml: float, min_volume_ml: float) -> float:
    """How near a healthy map came to a finding: the lowest level at which ``score`` has no component of at
    least ``min_volume_ml`` (``Predictor._findings``' seeds; ``calibrate.seed_levels``), over ``threshold``."""
    from medhdiff.training.calibrate import seed_levels

    return seed_levels(score, voxel_ml, (min_volume_ml,))[float(min_volume_ml)] / threshold


SMOOTHS_MM = (0.0, 2.0, 4.0, 6.0, 8.0)


def score_smooth(console: Console, n_healthy: int, n_tumours: int, cache: Path | None,
                 contrasts=("t2", "flair"), smooths=SMOOTHS_MM, cal_healthy: int | None = None) -> list[dict]:
    """Each ``detect.score_smooth_mm`` option calibrated as ``medhdiff calibrate`` would (configs/detector.yaml's
    detect settings, each contrast's shipped score scale, the calibration brains), then scored on the development
    brains. The signed residuals are computed once per brain (cached under ``cache``); every option scores
    them with ``Predictor.residual_score``, as ``detect`` does."""
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    cfg = load_config(ROOT / "configs" / "detector.yaml")
    d = cfg.detect
    if cal_healthy:  # a larger healthy calibration set (seeds 900000+, as calibrate draws them)
        d.healthy_volumes = int(cal_healthy)
    pred = Predictor(None, device="cpu", model="detector")
    rows = []
    for contrast in contrasts:
        scale = d.score_scale.get(contrast, "none")
        cal, dev = _brain_sets(console, pred, cfg, contrast, n_healthy, n_tumours, cache)
        for mm in smooths:
            scored = _scorer(d, contrast, mm, key=f"score{mm}")
            row = {"contrast": contrast, "smooth_mm": mm, "score_scale": scale, "calibration_healthy": d.healthy_volumes,
                   "seed_volumes_ml": list(d.seed_volumes(contrast)),
                   **_pick_and_apply(cal, dev, d.for_contrast(contrast), d.healthy_volumes, n_healthy, scored)}
            for item in (*cal, *dev):
                item.pop(f"score{mm}", None)
            rows.append(row)
            console.print(row)
    return rows


def _adapt_heal(pred, prep, label: int | None, contrast: str, steps: int, seed: int = 0):
    """A copy of ``pred``'s patch network fitted to heal lesions injected into this scan (see heal-adapt)."""
    import copy

    import torch

    from medhdiff.diffusion.networks import patch_coordinates
    from medhdiff.diffusion.sampler import downsample, upsample
    from medhdiff.synth import LesionInjector
    from medhdiff.training.datasets import augment_condition

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    img, brain = prep.image.astype(np.float32), prep.mask.astype(bool)
    f, roi, shape = pred.cfg.coarse_factor, tuple(pred.cfg.patch_size), prep.image.shape

    def context(x: torch.Tensor) -> torch.Tensor:
        return upsample(augment_condition(downsample(x[None, None], f)[0], rng, 0.05, 1.0)[None], shape)[0, 0]

    healthy = torch.from_numpy(img)
    views = []
    for _ in range(4):
        kind = "tumor" if rng.random() < 0.7 else "focal"
        try:
            les, _, _ = LesionInjector(kind=kind, volume_ml=(1.0, 60.0) if kind == "tumor" else (0.1, 3.0)).inject(
                img, brain, np.eye(4), contrast, seed=int(rng.integers(2**31 - 1)))
        except ValueError:
            continue
        les_t = torch.from_numpy(les.astype(np.float32))
        views.append((les_t, context(les_t), np.argwhere(np.abs(les - img) > 0.02)))
    plain = (healthy, context(healthy), np.argwhere(brain))
    msk = torch.from_numpy(brain.astype(np.float32))
    model = copy.deepcopy(pred.bundle.patch_model).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    labels = None if label is None else torch.full((4,), int(label), dtype=torch.long)
    losses = []
    for _ in range(steps):
        batch = []
        for b in range(4):
            x, cond, pool = views[int(rng.integers(len(views)))] if views and b % 2 == 0 else plain
            pool = pool if len(pool) else plain[2]
            c = pool[int(rng.integers(len(pool)))]
            st = [int(min(max(ci - r // 2, 0), s - r)) for ci, r, s in zip(c, roi, shape)]
            sl = tuple(slice(a, a + r) for a, r in zip(st, roi))
            batch.append((x[sl], healthy[sl], cond[sl], msk[sl], patch_coordinates(shape, st, roi)))
        x0, h, c, m = (torch.stack([item[k] for item in batch])[:, None] for k in range(4))
        coords = torch.stack([item[4] for item in batch])
        t = torch.randint(50, 151, (4,), generator=gen)
        x_t = pred.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
        out = model(x_t, t, cond=c, coords=coords, class_labels=labels)
        loss = ((out.float() - pred.schedule.output_for_x0(x_t, h, t)) ** 2 * m).sum() / m.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), losses


def heal_adapt(console: Console, steps: int) -> list[dict]:
    from bench_detect import healthy_synthetic, localisation

    from medhdiff.io import load_volume
    from medhdiff.metrics import dice
    from medhdiff.tasks import Predictor

    pred = Predictor(None, device="cpu", model="detector")
    shipped = pred.bundle.patch_model
    seg = load_volume(TUMOUR / CASE / "seg_consensus.nii.gz").data > 0
    inputs = [(f"{CASE} {c}", c, load_volume(TUMOUR / CASE / f"{fn}.nii.gz"), None) for fn, c in (("t2", "t2"), ("fla", "flair"))]
    for s in (733018, 740000):
        vol, brain = healthy_synthetic("t2", 0, first=s)
        inputs.append((f"synthetic healthy t2 (seed {s})", "t2", vol, brain))
    rows = []
    for name, contrast, vol, brain in inputs:
        inside = (vol.data != 0) if brain is None else brain
        for method in ("shipped", f"adapted {steps} steps"):
            with measure() as m:
                losses = []
                if method != "shipped":
                    prep = pred.prepare(vol, brain)
                    pred.bundle.patch_model, losses = _adapt_heal(pred, prep, pred.class_label(contrast), contrast, steps)
                try:
                    r = pred.detect(vol, contrast=contrast, mask=brain)
                finally:
                    pred.bundle.patch_model = shipped
            sc = r.score_map[inside]
            row = {"input": name, "method": method, "found_ml": r.report["total_lesion_ml"],
                   "score_p99": round(float(np.percentile(sc, 99)), 4), "score_p999": round(float(np.percentile(sc, 99.9)), 4),
                   "loss_first_last": [round(float(np.mean(losses[:5])), 4), round(float(np.mean(losses[-5:])), 4)] if losses else None,
                   "seconds": round(m.seconds, 1), "peak_rss_gb": round(m.peak_rss_gb, 3)}
            if brain is None:
                row.update(dice_auto=round(dice(r.mask > 0, seg), 4), **localisation(sc, seg[inside]))
            rows.append(row)
            console.print(row)
    return rows


CAL_OPTIONS = {"shipped": (8, None), "cal16": (16, None), "vol4": (8, (0.2, 0.5, 1.0, 2.0, 4.0)),
               "cal16+vol4": (16, (0.2, 0.5, 1.0, 2.0, 4.0))}


def cal_options(console: Console, n_healthy: int, n_tumours: int, cache: Path | None,
                contrast: str = "t2") -> list[dict]:
    """Each calibration option (``CAL_OPTIONS``: healthy calibration brains, seed volumes) picked as ``medhdiff
    calibrate`` would with the contrast's shipped score settings, then applied to the development brains."""
    import dataclasses

    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    cfg = load_config(ROOT / "configs" / "detector.yaml")
    n_cal = max(n for n, _ in CAL_OPTIONS.values())
    cfg.detect.healthy_volumes = n_cal  # draw (or read from the cache) the largest calibration set once
    pred = Predictor(None, device="cpu", model="detector")
    scale = cfg.detect.score_scale.get(contrast, "none")
    mm = cfg.detect.score_smooth_mm.get(contrast, 0.0)
    cal, dev = _brain_sets(console, pred, cfg, contrast, n_healthy, n_tumours, cache)
    scored = _scorer(cfg.detect, contrast)  # each option's pick reads the same maps

    rows = []
    for name, (n, volumes) in CAL_OPTIONS.items():
        d = dataclasses.replace(cfg.detect.for_contrast(contrast), healthy_volumes=n)
        if volumes is not None:
            d = dataclasses.replace(d, seed_min_volumes_ml=list(volumes))
        mine = cal[:n] + cal[n_cal:]  # its healthy brains, then the tumours
        row = {"contrast": contrast, "option": name, "smooth_mm": mm, "score_scale": scale,
               "calibration_healthy": n, "seed_min_volumes_ml": list(d.seed_min_volumes_ml),
               **_pick_and_apply(mine, dev, d, n, n_healthy, scored)}
        rows.append(row)
        console.print(row)
    return rows


SMALL_SEED = DEV_SEED + 1000  # 741000+: small development tumours
SMALL_ML = (1.0, 8.0)
TEST_SEED = 742_000  # held-out test brains: healthy 742000+, tumours of 5-60 mL 742500+, of 1-8 mL 743000+
LARGE_SEED = 744_000  # large tumours of 60-150 mL: development 744000+, test 745000+
LARGE_ML = (60.0, 150.0)
#: The cached brain sets of the candidates section: their first seed, and their tumours' size range (healthy: None).
SET_STARTS = {"devh": DEV_SEED, "devt": DEV_SEED + 500, "devs": SMALL_SEED, "devl": LARGE_SEED,
              "tsth": TEST_SEED, "tstt": TEST_SEED + 500, "tsts": TEST_SEED + 1000, "tstl": LARGE_SEED + 1000}
SET_SIZES_ML = {"devh": None, "devt": (5.0, 60.0), "devs": SMALL_ML, "devl": LARGE_ML,
                "tsth": None, "tstt": (5.0, 60.0), "tsts": SMALL_ML, "tstl": LARGE_ML}
#: Blocks of fresh seeds (``--seed-block``) that no earlier run drew: 770000 (stop 30) and up, 4000 apart.
FIRST_FRESH_BLOCK = 770_000


def _drawn_cache(model_cache: Path, synthesis: dict | None, calibration_synthesis: dict | None = None) -> Path:
    """Where one model's cached brains live, apart by how they were drawn: every brain with ``synthesis``
    (``--synthesis``: ``syn-<hash>/``), only the calibration brains with the config's ``calibration_synthesis``
    (``calsyn-<hash>/``), or neither (the model's own folder)."""
    if synthesis:
        how, prefix = json.dumps(synthesis, sort_keys=True), "syn"
    elif calibration_synthesis:
        how, prefix = "calibration " + json.dumps(calibration_synthesis, sort_keys=True), "calsyn"
    else:
        return model_cache
    return model_cache / f"{prefix}-{hashlib.sha256(how.encode()).hexdigest()[:8]}"


def first_seed_of(seed: int) -> int:
    """The first seed of the candidates section's seed layout that drew ``seed``: its fresh block
    (:func:`use_seed_block`), or ``DEV_SEED`` for the original sets."""
    return DEV_SEED if seed < FIRST_FRESH_BLOCK else FIRST_FRESH_BLOCK + (seed - FIRST_FRESH_BLOCK) // 4000 * 4000


def use_seed_block(block: int) -> None:
    """Draw every cached set of the candidates section from a block of fresh seeds: development healthy
    ``block``+, tumours of 5-60 mL +500, of 1-8 mL +1000, of 60-150 mL +1500; test +2000, +2500, +3000, +3500.
    Sets that have been seen (their rows informed a choice) are replaced by unseen ones this way; the
    calibration brains (900000+) stay, as ``medhdiff calibrate`` draws them."""
    if block < FIRST_FRESH_BLOCK or first_seed_of(block) != block:
        raise SystemExit(f"error: a seed block is {FIRST_FRESH_BLOCK} + a multiple of 4000, got {block}")
    SET_STARTS.update({tag: block + 500 * k for k, tag in enumerate(SET_STARTS)})


def _test_brains(contrast: str, n_healthy: int, n_tumours: int, n_small: int, synthesis: dict | None = None):
    """The held-out test brains of the candidates section, as ``_reconstructed`` takes them: ``n_healthy`` clean
    healthy brains (tag tsth), ``n_tumours`` tumours of 5-60 mL (tstt) and ``n_small`` of 1-8 mL (tsts), 1-2 %
    noise, drawn as the development brains are from seeds no other set draws."""
    from bench_detect import healthy_synthetic, synthetic_tumours

    for i in range(n_healthy):
        vol, brain = healthy_synthetic(contrast, i, first=SET_STARTS["tsth"], synthesis=synthesis)
        yield "tsth", SET_STARTS["tsth"] + i, vol.data, vol.affine, brain, None
    for tag, start, n, sizes in (("tstt", SET_STARTS["tstt"], n_tumours, (5.0, 60.0)),
                                 ("tsts", SET_STARTS["tsts"], n_small, SMALL_ML)):
        for s, vol, brain, lesion in synthetic_tumours(contrast, start, n, (0.01, 0.02), sizes, synthesis):
            yield tag, s, vol.data, vol.affine, brain, lesion


def _large_brains(contrast: str, tag: str, start: int, n: int, synthesis: dict | None = None):
    """``n`` brains with a large tumour (60-150 mL, 1-2 % noise) from seed ``start``, as ``_reconstructed``
    takes them."""
    from bench_detect import synthetic_tumours

    for s, vol, brain, lesion in synthetic_tumours(contrast, start, n, (0.01, 0.02), LARGE_ML, synthesis):
        yield tag, s, vol.data, vol.affine, brain, lesion


def candidates(console: Console, models: list[str], contrasts, n_healthy: int, n_tumours: int, n_small: int,
               cache: Path | None, seed_tails=("config",), test: tuple[int, int, int] = (0, 0, 0),
               grow_grids=("config",), intensity_levels=("config",), n_large: int = 0,
               test_large: int = 0, synthesis: dict | None = None, shipped_row: bool = False) -> list[dict]:
    """Detection models compared as each would ship: per model and contrast, the pick ``medhdiff calibrate``
    would make with configs/detector.yaml's settings (its healthy count per contrast, score scale and
    smoothing) on that model's own reconstructions of the calibration brains, applied to the development
    brains, ``n_small`` small development tumours, the held-out ``test`` brains (healthy, 5-60 mL, 1-8 mL;
    :func:`_test_brains`) and TCGA-DU-7294. One row per ``seed_tails`` option: ``"config"`` (the config's
    ``detect.seed_tail`` for the contrast), ``None`` (no seed floor) or a probability, and per
    ``grow_grids`` option: ``"config"`` (the contrast's ``DetectConfig.grow_grid``) or a tuple of grow percentiles,
    and per ``intensity_levels`` option: ``"config"`` (the contrast's ``DetectConfig.intensity_level``), ``"scan"``
    or ``"robust"``. ``n_large`` development and ``test_large`` test brains carry a large tumour (60-150 mL;
    :func:`_large_brains`). With ``synthesis`` (``HealthyBrainGenerator`` settings), every brain, calibration
    ones included, is drawn with it (cached apart, under ``syn-<its hash>/``). With ``synthesis`` or
    ``shipped_row``, for the shipped detection model a first row gives its shipped calibration's pick applied
    to the brains."""
    import copy

    from bench_detect import UNREFERENCED, bright_extent_ml, score_peaks, synthetic_tumours

    from medhdiff.io import load_volume
    from medhdiff.metrics import dice
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    base = load_config(ROOT / "configs" / "detector.yaml")
    seg = load_volume(TUMOUR / CASE / "seg_consensus.nii.gz").data > 0
    rows = []
    for spec in models:
        pred = Predictor(None if spec == "detector" else spec, device="cpu", model="detector")
        where = None if cache is None else cache / pred.sha256[:12]  # one model's residuals never mix with another's
        model_cache = where
        for contrast in contrasts:
            where = None if model_cache is None else _drawn_cache(model_cache, synthesis,
                                                                  base.detect.synthesis(contrast))
            cfg = copy.deepcopy(base)
            cfg.detect.healthy_volumes = cfg.detect.healthy_count(contrast)
            if synthesis:
                cfg.detect.calibration_synthesis = {contrast: synthesis}
            d = cfg.detect.for_contrast(contrast)
            scored = _scorer(d, contrast)
            level_of = lambda lv: d.intensity_level(contrast) if lv == "config" else lv  # noqa: E731
            shipped = pred.bundle.meta.get("calibration") or {}
            shipped_level = shipped.get("grow_intensity_level", {}).get(contrast, "scan")
            levels = sorted({*map(level_of, intensity_levels), shipped_level})
            if "outside" in levels:  # as medhdiff calibrate refuses it (the outside section measures it)
                sys.exit("error: the intensity level 'outside' cannot be picked; see --sections outside")
            cal, dev = _brain_sets(console, pred, cfg, contrast, n_healthy, n_tumours, where, scored, levels, synthesis)
            small = _reconstructed(console, pred, d, contrast, (
                ("devs", s, vol.data, vol.affine, brain, lesion)
                for s, vol, brain, lesion in synthetic_tumours(contrast, SET_STARTS["devs"], n_small, (0.01, 0.02), SMALL_ML,
                                                               synthesis)),
                where, scored, levels)
            large = _reconstructed(console, pred, d, contrast,
                                   _large_brains(contrast, "devl", SET_STARTS["devl"], n_large, synthesis), where, scored, levels)
            scan = load_volume(TUMOUR / CASE / f"{'fla' if contrast == 'flair' else contrast}.nii.gz")
            real = _reconstructed(console, pred, d, contrast, [("real", 0, scan.data, scan.affine, None, seg)],
                                  where, scored, levels)[0]
            unref = {}  # the real tumour scans without a reference: found volumes reported, not criteria
            for k, name in enumerate(UNREFERENCED):
                vol = load_volume(TUMOUR / name / CASES[name][contrast])
                unref[name] = (bright_extent_ml(vol), _reconstructed(
                    console, pred, d, contrast, [("unref", k, vol.data, vol.affine, None, None)], where, scored,
                    levels)[0])
            held_out = _reconstructed(console, pred, d, contrast, _test_brains(contrast, *test, synthesis), where,
                                      scored, levels)
            held_large = _reconstructed(console, pred, d, contrast,
                                        _large_brains(contrast, "tstl", SET_STARTS["tstl"], test_large, synthesis),
                                        where, scored, levels)
            everything = [*cal, *dev, *small, *large, real, *(it for _, it in unref.values()), *held_out, *held_large]
            options = [(o, g, v) for o in seed_tails for g in grow_grids for v in intensity_levels]
            if (synthesis or shipped_row) and spec == "detector":  # the shipped pick first, on these brains
                options.insert(0, ("shipped", "config", shipped_level))
            for option, grid, lv in options:
                level = level_of(lv)
                for item in everything:  # _pick and _found read item["bright"]
                    item["bright"] = item["bright_by_level"][level]
                if option == "shipped":
                    h = shipped["hysteresis"][contrast]
                    pick = {**h, "threshold": shipped["threshold"][contrast],
                            "grow_threshold": shipped["grow_threshold"][contrast],
                            "dice": shipped["synthetic_tumour"][contrast]["dice_at_calibrated"]}
                    tail = h.get("seed_tail")
                else:
                    tail = d.seed_tail.get(contrast) if option == "config" else option
                    dg = copy.deepcopy(d)
                    if grid != "config":
                        dg.grow_percentiles = list(grid)
                    pick = _pick(cal, dg, d.healthy_volumes, scored, tail)
                small_row = _apply(pick, small, 0, scored)
                mask = _found(pick, real, scored)
                row = {"model": spec, "sha256": pred.sha256[:12], "contrast": contrast, "synthesis": synthesis,
                       "first_seed": SET_STARTS["devh"],
                       "pick_source": "shipped calibration" if option == "shipped" else "calibrated here",
                       "smooth_mm": d.score_smooth_mm.get(contrast, 0.0),
                       "score_scale": d.score_scale.get(contrast, "none"), "calibration_healthy": d.healthy_volumes,
                       "seed_tail": tail, "grow_percentiles": None if grid == "config" else list(grid),
                       "grow_intensity_level": level,
                       "seed_threshold": round(pick["threshold"], 4),
                       "seed_floor": None if pick.get("seed_floor") is None else round(pick["seed_floor"], 4),
                       "pick": pick_label(pick),
                       "calibration_dice": pick["dice"], "useful": pick.get("useful", True),
                       **_apply(pick, dev, n_healthy, scored),
                       "small_tumours": small_row["tumours"], "small_reached": small_row["tumours_reached"],
                       "small_found_ml": small_row["found_ml"], "small_reference_ml": small_row["reference_ml"],
                       "small_pooled_dice": small_row["pooled_dice"],
                       "small_peaks": [round(score_peaks(scored(c), pick["threshold"], c["inner"], c["ref"])[0], 2)
                                       for c in small],
                       "real_case": CASE, "real_found_ml": round(float(mask.sum()) * VOXEL_ML, 1),
                       "real_dice": round(dice(mask, real["ref"]), 3),
                       "unreferenced": {name: {"found_ml": round(float(_found(pick, it, scored).sum()) * VOXEL_ML, 1),
                                               "crude_hyperintensity_ml": crude}
                                        for name, (crude, it) in unref.items()}}
                if large:
                    row["large"] = _apply(pick, large, 0, scored)
                if held_out:
                    row["test"] = {**_apply(pick, held_out[:test[0]] + held_out[test[0]:test[0] + test[1]],
                                            test[0], scored),
                                   "small": _apply(pick, held_out[test[0] + test[1]:], 0, scored)}
                if held_large:
                    row.setdefault("test", {})["large"] = _apply(pick, held_large, 0, scored)
                rows.append(row)
                console.print(row)
            # a model's brains are not kept while the next is reconstructed
            del cal, dev, small, large, real, unref, held_out, held_large, everything
    return rows


def _shipped_scoring(cal: dict, base, contrast: str) -> tuple:
    """``(d, scored, seed threshold, grow threshold or None, intensity grow percentile or None, seed mL)`` of one
    contrast as the shipped calibration ``cal`` scores it (its score scale and smoothing, not ``base``'s, the
    config's detect settings), for sections that apply the shipped pick to cached brains."""
    from medhdiff.tasks import Predictor

    d = dataclasses.replace(base.for_contrast(contrast),
                            score_scale={contrast: (cal.get("score_scale") or {}).get(contrast, "none")},
                            score_smooth_mm={contrast: (cal.get("score_smooth_mm") or {}).get(contrast, 0.0)})
    thr = cal["threshold"][contrast]
    grow_thr = Predictor._grow_threshold("auto", cal, contrast, thr)  # None: no growth, as detect reads it
    q = cal["grow_intensity_percentile"][contrast] if grow_thr is not None else None
    return d, _scorer(d, contrast), thr, grow_thr, q, cal["seed_min_volume_ml"][contrast]


def _pooled(found: dict, healthy: str, tumours: str, small: str, large: str) -> dict:
    """One summary of masks per set (``found``: tag -> ``[(mask or None, reference)]``, model space; ``None``: not
    scored): healthy brains with a finding and the worst, and per tumour set tumours scored, reached, found /
    reference mL and pooled Dice."""
    fp = [float(m.sum()) * VOXEL_ML for m, _ in found.get(healthy, []) if m is not None]
    out = {"healthy": len(fp), "healthy_with_finding": sum(v > 0 for v in fp),
           "worst_healthy_ml": round(max(fp, default=0.0), 2)}
    for key, tag in (("tumours", tumours), ("small", small), ("large", large)):
        tally = TumourTally()
        for m, ref in found.get(tag, []):
            if m is not None:
                tally.add(m, ref, VOXEL_ML)
        out[key] = {"n": sum(m is not None for m, _ in found.get(tag, [])), "reached": tally.reached,
                    "found_ml": round(tally.found_ml, 1), "reference_ml": round(tally.reference_ml, 1),
                    "pooled_dice": round(tally.pooled_dice, 3)}
    return out


def combine(console: Console, cache: Path, n_healthy: int, n_tumours: int, n_small: int,
            test: tuple[int, int, int], n_large: int = 0, test_large: int = 0) -> list[dict]:
    """The combine section: every rule of ``Predictor.combine_findings`` on the paired T2 and FLAIR brains
    (cached by the candidates section), each contrast at the shipped detection model's calibration."""
    from medhdiff.metrics import dice
    from medhdiff.tasks import Predictor
    from medhdiff.tasks.predictor import COMBINE_RULES
    from medhdiff.training import load_config

    pred = Predictor(None, device="cpu", model="detector")
    cal = pred.bundle.meta["calibration"]
    where = cache / pred.sha256[:12]
    base = load_config(ROOT / "configs" / "detector.yaml").detect
    contrasts = ("t2", "flair")
    counts = {"devh": n_healthy, "devt": n_tumours, "devs": n_small, "tsth": test[0], "tstt": test[1],
              "tsts": test[2], "devl": n_large, "tstl": test_large}
    sets = {**{tag: [SET_STARTS[tag] + i for i in range(n)] for tag, n in counts.items()}, "real": [0]}

    def cached(contrast: str, tag: str):
        """The seeds of ``tag`` that this contrast's cache holds (a seed whose tumour found no room is absent)."""
        return [s for s in sets[tag] if (where / f"{contrast}_{tag}_{s}.npz").is_file()]

    items = {}  # (tag, seed) -> {contrast: (normalised score, grow region, mask, reference)}
    if cal.get("grow_opening_mm", 0.0):
        sys.exit("error: the combine section does not open grow regions; this calibration does")
    for contrast in contrasts:
        d, scored, thr, grow_thr, q, _ = _shipped_scoring(cal, base, contrast)
        level = cal.get("grow_intensity_level", {}).get(contrast, "scan")
        for tag in sets:
            seeds = [s for s in cached(contrast, tag) if s in cached("t2" if contrast == "flair" else "flair", tag)]
            brains = [(tag, s, None, None, None, None) for s in seeds]  # from the cache: no image needed
            for s, item in zip(seeds, _reconstructed(console, pred, d, contrast, brains, where, scored,
                                                     (level,) if q is not None else ())):
                sc = scored(item)
                grow = None if grow_thr is None else sc > grow_thr
                if q is not None:
                    grow |= item["bright_by_level"][level][q]
                items.setdefault((tag, s), {})[contrast] = (sc / thr, grow, item["mask"], item["ref"])
    order, useful = Predictor.lead_order(cal, contrasts)  # as detect_multi orders and bounds them
    seed_ml = {c: cal["seed_min_volume_ml"][c] for c in contrasts}
    rows = []
    for rule in COMBINE_RULES:
        tallies = {}
        for (tag, s), per in items.items():
            found = Predictor.combine_findings({c: per[c][0] for c in contrasts}, {c: per[c][1] for c in contrasts},
                                               seed_ml, VOXEL_ML, 1.0, rule, order, useful)
            inside = np.logical_and.reduce([per[c][2] for c in contrasts])
            mask = np.logical_or.reduce(list(found.values())) & inside
            tallies.setdefault(tag, []).append((mask, per[contrasts[0]][3]))
            if tag == "real":
                real_per = {c: float(found[c].sum()) * VOXEL_ML for c in contrasts}

        real_mask, real_ref = tallies["real"][0]
        row = {"rule": rule, "order": order, "grow_intensity_level": {c: cal.get("grow_intensity_level", {}).get(
                   c, "scan") for c in contrasts},
               "development": _pooled(tallies, "devh", "devt", "devs", "devl"),
               "test": _pooled(tallies, "tsth", "tstt", "tsts", "tstl"),
               "real_case": CASE, "real_found_ml": round(float(real_mask.sum()) * VOXEL_ML, 1),
               "real_found_ml_per_contrast": {c: round(v, 1) for c, v in real_per.items()},
               "real_dice": round(dice(real_mask, real_ref), 3)}
        rows.append(row)
        console.print(row)
    return rows


def _set_brains(contrast: str, tag: str, n: int):
    """The brains of one cached set (``tag`` as the candidates section names it, ``n`` of them), drawn again as
    ``_reconstructed`` takes them: the images, which the residual cache does not keep."""
    from bench_detect import healthy_synthetic, synthetic_tumours

    from medhdiff.io import load_volume

    if tag == "real":
        scan = load_volume(TUMOUR / CASE / f"{'fla' if contrast == 'flair' else contrast}.nii.gz")
        yield "real", 0, scan.data, scan.affine, None, load_volume(TUMOUR / CASE / "seg_consensus.nii.gz").data > 0
    elif SET_SIZES_ML[tag] is None:
        for i in range(n):
            vol, brain = healthy_synthetic(contrast, i, first=SET_STARTS[tag])
            yield tag, SET_STARTS[tag] + i, vol.data, vol.affine, brain, None
    else:
        for s, vol, brain, lesion in synthetic_tumours(contrast, SET_STARTS[tag], n, (0.01, 0.02), SET_SIZES_ML[tag]):
            yield tag, s, vol.data, vol.affine, brain, lesion


def outside(console: Console, cache: Path, n_healthy: int, n_tumours: int, n_small: int,
            test: tuple[int, int, int], n_large: int, test_large: int) -> list[dict]:
    """The outside section: FLAIR's findings at the shipped calibration with its intensity grow level 'scan'
    (as shipped) and 'outside' (``Predictor.outside_findings_region``), alone and in the ``--t2 --flair``
    consensus, on the candidates section's cached brains (nothing reconstructed). A brain without a finding at
    the scan level keeps it exactly under 'outside', so only brains with one are drawn again for their
    filtered intensity (cached under ``<cache>/<sha12>/filtered/``)."""
    from medhdiff.io import Volume
    from medhdiff.metrics import dice
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    pred = Predictor(None, device="cpu", model="detector")
    cal = pred.bundle.meta["calibration"]
    where = cache / pred.sha256[:12]
    if cal.get("grow_opening_mm", 0.0):
        sys.exit("error: the outside section does not open grow regions; this calibration does")
    base = load_config(ROOT / "configs" / "detector.yaml").detect
    contrasts = ("t2", "flair")
    settings = {c: _shipped_scoring(cal, base, c) for c in contrasts}
    if settings["flair"][4] is None:
        sys.exit("error: the shipped FLAIR calibration grows through no intensity region")
    order, useful = Predictor.lead_order(cal, contrasts)
    seed_ml = {c: settings[c][5] for c in contrasts}
    sets = {"devh": n_healthy, "devt": n_tumours, "devs": n_small, "devl": n_large, "real": 1,
            "tsth": test[0], "tstt": test[1], "tsts": test[2], "tstl": test_large}
    levels = ("scan", "outside")
    results = {lv: {} for lv in levels}  # level -> tag -> [(flair mask, consensus mask, ref, rounds)]
    for tag, n in sets.items():
        if not n:
            continue
        source = None  # the set drawn again, lazily, only for brains with a finding
        for s in [x for x in _seed_list(tag, n) if (where / f"flair_{tag}_{x}.npz").is_file()][:n]:
            per = {}
            for c in (c for c in contrasts if (where / f"{c}_{tag}_{s}.npz").is_file()):
                d, scored, thr, grow_thr, q, _ = settings[c]
                brains = [(tag, s, None, None, None, None)]
                item = _reconstructed(console, pred, d, c, brains, where, scored, ())[0]
                per[c] = item
            fl = per["flair"]
            d, scored, thr, grow_thr, q, _ = settings["flair"]
            sc = scored(fl)
            score_grow = sc > grow_thr
            grow = {"scan": score_grow | fl["bright"][q]}
            found_scan = Predictor._findings(sc, thr, VOXEL_ML, seed_ml["flair"], grow["scan"])
            rounds = 1
            if found_scan.any():
                side = where / "filtered" / f"flair_{tag}_{s}.npz"
                if side.is_file():
                    with np.load(side) as z:
                        smooth = z["smooth"]
                else:
                    if source is None:
                        source = _set_brains("flair", tag, n)
                    for t_, s_, image, aff, brain, _ in source:
                        if s_ == s:
                            break
                    else:
                        raise RuntimeError(f"flair {tag} {s}: not drawn again")
                    prep = pred.prepare(Volume(image, aff), mask=brain)
                    if not np.array_equal(prep.mask, fl["mask"]):
                        raise RuntimeError(f"flair {tag} {s}: drawn again, it differs from the cached brain")
                    smooth = Predictor.filtered_region(prep.image, prep.mask)[0]
                    side.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(side, smooth=smooth)
                bright, rounds = Predictor.outside_findings_region(sc, thr, score_grow, (smooth, fl["inner"]), q,
                                                                   VOXEL_ML, seed_ml["flair"])
                grow["outside"] = score_grow | bright
            else:
                grow["outside"] = grow["scan"]  # no finding: the scan level, exactly
            t2 = per.get("t2")
            for lv in levels:
                alone = Predictor._findings(sc, thr, VOXEL_ML, seed_ml["flair"], grow[lv]) & fl["mask"]
                joint = None
                if t2 is not None:
                    d2, scored2, thr2, grow_thr2, _, _ = settings["t2"]
                    sc2 = scored2(t2)
                    found = Predictor.combine_findings(
                        {"t2": sc2 / thr2, "flair": sc / thr},
                        {"t2": None if grow_thr2 is None else sc2 > grow_thr2, "flair": grow[lv]},
                        seed_ml, VOXEL_ML, 1.0, "consensus", order, useful)
                    joint = (found["t2"] | found["flair"]) & fl["mask"] & t2["mask"]
                results[lv].setdefault(tag, []).append((alone, joint, fl["ref"], rounds if lv == "outside" else 1))
            console.print(f"flair {tag} {s}: found {float(found_scan.sum()) * VOXEL_ML:.1f} mL at the scan level, "
                          f"{float(results['outside'][tag][-1][0].sum()) * VOXEL_ML:.1f} outside ({rounds} levels)")
            del per, fl, sc

    def summary(lv: str, k: int, h: str, t: str, sm: str, lg: str) -> dict:
        rows = results[lv]
        out = _pooled({tag: [(r[k], r[2]) for r in v] for tag, v in rows.items()}, h, t, sm, lg)
        out["max_levels"] = max((r[3] for tag in (h, t, sm, lg) for r in rows.get(tag, [])), default=0)
        return out

    if "real" not in results["scan"]:
        sys.exit(f"error: {where}/flair_real_0.npz is missing: run the candidates section for FLAIR first")
    out = []
    for k, what in ((0, "flair"), (1, "t2+flair consensus")):
        for lv in levels:
            real = results[lv]["real"][0]
            row = {"input": what, "flair_intensity_level": lv,
                   "development": summary(lv, k, "devh", "devt", "devs", "devl"),
                   "test": summary(lv, k, "tsth", "tstt", "tsts", "tstl"), "real_case": CASE,
                   "real_found_ml": None if real[k] is None else round(float(real[k].sum()) * VOXEL_ML, 1),
                   "real_dice": None if real[k] is None else round(dice(real[k], real[2]), 3),
                   "real_levels": real[3]}
            out.append(row)
            console.print(row)
    return out


#: The seed layouts whose brains have been scored and seen: the original sets and stop 30's fresh block.
SEEN_BLOCKS = (DEV_SEED, FIRST_FRESH_BLOCK)
ROBUST_GROW_OPTIONS = (("scan", 98.0), ("robust", 99.5), ("robust", 99.0), ("robust", 98.0), ("robust", 97.0))


def robust_grow(console: Console, cache: Path, synthesis: dict, blocks=SEEN_BLOCKS) -> list[dict]:
    """The robust-grow section (stop 30, exploration on seen brains): the shipped FLAIR seeds, seed volume and
    score grow level kept, only the intensity grow region changed, from the scan's own p98 to a percentile of
    the robust (median/MAD normal) level, on every cached FLAIR brain drawn with ``synthesis`` (stop 29's sets
    at 740000+ and block 770000; ``blocks`` names the blocks read by their first seed, so a block cached for a
    later test stays unscored). Seeds decide whether a brain has a finding, so the healthy
    brains with a finding and the tumours reached cannot change; the volumes and Dice do. One row per option
    and seed block, its development and test sets summarised as the combine and outside sections summarise
    theirs. Nothing is reconstructed: it reads the candidates section's cache (``bright_robust/`` included)."""
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    pred = Predictor(None, device="cpu", model="detector")
    cal = pred.bundle.meta["calibration"]
    where = _drawn_cache(cache / pred.sha256[:12], synthesis)
    if not where.is_dir():
        sys.exit(f"error: no cached brains drawn with {json.dumps(synthesis)} under {cache}; run the candidates "
                 "section first")
    base = load_config(ROOT / "configs" / "detector.yaml").detect
    d, scored, thr, grow_thr, _, seed_ml = _shipped_scoring(cal, base, "flair")
    found = {}  # (option, first seed of the block) -> tag -> [(mask, reference)]
    for path in sorted(where.glob("flair_*.npz")):
        _, tag, seed = path.stem.split("_")
        if tag not in SET_SIZES_ML or first_seed_of(int(seed)) not in blocks:  # calibration, real, unseen
            continue
        item = _reconstructed(console, pred, d, "flair", [(tag, int(seed), None, None, None, None)], where, scored,
                              ("robust",))[0]
        sc = scored(item)
        for option in ROBUST_GROW_OPTIONS:
            level, q = option
            grow = (sc > grow_thr) | item["bright_by_level"][level][q]
            mask = Predictor._findings(sc, thr, VOXEL_ML, seed_ml, grow) & item["mask"]
            found.setdefault((option, first_seed_of(int(seed))), {}).setdefault(tag, []).append((mask, item["ref"]))
    rows = []
    for ((level, q), first), per in found.items():
        row = {"intensity_level": level, "intensity_percentile": q, "first_seed": first, "synthesis": synthesis,
               "development": _pooled(per, "devh", "devt", "devs", "devl"),
               "test": _pooled(per, "tsth", "tstt", "tsts", "tstl")}
        rows.append(row)
        console.print(row)
    return rows


def _seed_list(tag: str, n: int) -> list[int]:
    """The seeds a set's cached brains may carry (a tumour set skips seeds whose tumour found no room, so it
    looks a little further)."""
    if tag == "real":
        return [0]
    start = SET_STARTS[tag]
    return list(range(start, start + n + (0 if SET_SIZES_ML[tag] is None else 100)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["tta", "thick", "detect", "coarse"])
    ap.add_argument("--models", nargs="+", default=["shipped"],
                    help="'shipped' (the default model), 'detector' (the shipped detection model; candidates) "
                         "or model folders (detect, coarse and candidates sections)")
    ap.add_argument("--steps", type=int, default=None, help="detect: DDIM steps (default: the model's calibration)")
    ap.add_argument("--ensemble", type=int, default=None, help="detect: reconstructions per scan (default: calibration)")
    ap.add_argument("--strengths", type=float, nargs="+", default=None, help="detect: strengths (default: calibration)")
    ap.add_argument("--coarse", default="matched", choices=["matched", "same"], help="detect: coarse-stage timestep")
    ap.add_argument("--adapt-steps", type=int, default=40, help="heal-adapt: adaptation steps")
    ap.add_argument("--dev-healthy", type=int, default=16, help="opening: healthy development brains per contrast")
    ap.add_argument("--dev-tumours", type=int, default=10, help="opening: development tumours per contrast")
    ap.add_argument("--dev-small", type=int, default=8,
                    help="candidates: small development tumours (1-8 mL, seeds 741000+) per contrast")
    ap.add_argument("--cache", default=None,
                    help="score-scale, score-smooth: folder that keeps each brain's signed residuals (shared by both sections; "
                         "a re-run only re-picks)")
    ap.add_argument("--contrasts", nargs="+", default=["t2", "flair"], choices=["t2", "flair"],
                    help="score-smooth, candidates: contrasts to measure")
    ap.add_argument("--smooths", nargs="+", type=float, default=list(SMOOTHS_MM), help="score-smooth: sigmas (mm)")
    ap.add_argument("--test", type=int, nargs=3, default=[0, 0, 0], metavar=("HEALTHY", "TUMOURS", "SMALL"),
                    help="candidates: held-out test brains per contrast (healthy 742000+, tumours of 5-60 mL "
                         "742500+, of 1-8 mL 743000+)")
    ap.add_argument("--seed-tails", nargs="+", default=["config"],
                    help="candidates: seed-floor options, each 'config' (configs/detector.yaml's detect.seed_tail), "
                         "'none' or a probability")
    ap.add_argument("--grow-grids", nargs="+", default=["config"],
                    help="candidates: grow-percentile grids, each 'config' (the contrast's grid in the config) or a "
                         "comma-separated list, e.g. 99.9,99.8,99.5,99,98,97,95,93,90,85,80")
    ap.add_argument("--intensity-levels", nargs="+", default=["config"],
                    choices=["config", *(lv for lv in INTENSITY_LEVELS if lv != "outside")],
                    help="candidates: what intensity grow percentiles are of: 'config' (the contrast's "
                         "detect.grow_intensity_level; 'outside' is picked as 'scan'), 'scan' or 'robust' "
                         "('outside' has its own section)")
    ap.add_argument("--dev-large", type=int, default=0,
                    help="candidates: development brains with a large tumour (60-150 mL, seeds 744000+) per contrast")
    ap.add_argument("--test-large", type=int, default=0,
                    help="candidates: held-out test brains with a large tumour (60-150 mL, seeds 745000+)")
    ap.add_argument("--synthesis", default=None,
                    help="candidates: HealthyBrainGenerator settings (JSON) every brain is drawn with, e.g. "
                         '\'{"texture_amplitude": [0.06, 0.12], "tissue_ratios": {"wm": [0.8, 0.9]}}\'')
    ap.add_argument("--shipped-row", action="store_true",
                    help="candidates: also the shipped detection model's calibrated pick, applied as it ships")
    ap.add_argument("--seed-block", type=int, default=None,
                    help=f"candidates: draw the development and test sets from this block of fresh seeds "
                         f"({FIRST_FRESH_BLOCK} + a multiple of 4000; see use_seed_block)")
    ap.add_argument("--cal-healthy", type=int, default=None,
                    help="score-smooth: healthy calibration brains (default: configs/detector.yaml's)")
    args = ap.parse_args()
    if not require_data():
        return
    console = Console()
    path = RESULTS_DIR / "levers.json"
    payload = json.loads(path.read_text()) if path.is_file() else {}
    payload.setdefault("runs", []).append(machine())
    for spec in args.models:
        if spec not in ("shipped", "detector") and not Path(spec).exists():
            sys.exit(f"error: no model at {spec}")
    if "tta" in args.sections:
        payload["tta"] = tta(console)
        save_results("levers", payload)
    if "thick" in args.sections:
        payload["thick"] = thick(console)
        save_results("levers", payload)
    if "detect" in args.sections:
        # rows accumulate over runs with different settings; a re-run replaces its own rows
        new = detect(args.models, console, args)
        ident = lambda r: (r["model"], r["input"], json.dumps(r["settings"], sort_keys=True))  # noqa: E731
        keys = {ident(r) for r in new}
        payload["detect"] = [r for r in payload.get("detect", []) if ident(r) not in keys] + new
        save_results("levers", payload)
    if "coarse" in args.sections:
        payload["coarse"] = coarse(args.models, console)
        save_results("levers", payload)
    if "opening" in args.sections:
        payload["opening"] = opening(console, args.dev_healthy, args.dev_tumours)
        save_results("levers", payload)
    if "score-scale" in args.sections:
        payload["score_scale"] = score_scale(console, args.dev_healthy, args.dev_tumours,
                                             Path(args.cache) if args.cache else None)
        save_results("levers", payload)
    if "score-smooth" in args.sections:
        rows = score_smooth(console, args.dev_healthy, args.dev_tumours, Path(args.cache) if args.cache else None,
                            args.contrasts, tuple(args.smooths), args.cal_healthy)
        # one run per contrast may go on side by side: re-read the file and replace only this run's contrasts
        latest = json.loads(path.read_text()) if path.is_file() else {}
        ident = lambda r: (r["contrast"], r["smooth_mm"], r.get("calibration_healthy", 8))  # noqa: E731
        keys = {ident(r) for r in rows}
        payload["score_smooth"] = [r for r in latest.get("score_smooth", []) if ident(r) not in keys] + rows
        save_results("levers", payload)
    if "cal-options" in args.sections:
        payload["cal_options"] = cal_options(console, args.dev_healthy, args.dev_tumours,
                                             Path(args.cache) if args.cache else None)
        save_results("levers", payload)
    if "candidates" in args.sections:
        if args.seed_block is not None:
            use_seed_block(args.seed_block)
        tails = [t if t == "config" else None if t == "none" else float(t) for t in args.seed_tails]
        rows = candidates(console, args.models, args.contrasts, args.dev_healthy, args.dev_tumours, args.dev_small,
                          Path(args.cache) if args.cache else None, tails, tuple(args.test),
                          [g if g == "config" else tuple(float(p) for p in g.split(",")) for g in args.grow_grids],
                          args.intensity_levels, args.dev_large, args.test_large,
                          json.loads(args.synthesis) if args.synthesis else None, args.shipped_row)
        # one run per model may go on side by side: re-read the file and replace only this run's rows
        latest = json.loads(path.read_text()) if path.is_file() else {}
        ident = lambda r: (r["sha256"], r["contrast"], r.get("seed_tail"),
                           json.dumps(r.get("grow_percentiles")), r.get("grow_intensity_level", "scan"),
                           json.dumps(r.get("synthesis"), sort_keys=True),
                           r.get("pick_source", "calibrated here"), r.get("first_seed", DEV_SEED))  # noqa: E731
        keys = {ident(r) for r in rows}
        payload["candidates"] = [r for r in latest.get("candidates", []) if ident(r) not in keys] + rows
        save_results("levers", payload)
    for name, section in (("combine", combine), ("outside", outside)):  # both apply the shipped pick to the cache
        if name in args.sections:
            if not args.cache:
                sys.exit(f"error: the {name} section reads the candidates section's cache: give --cache")
            payload[name] = section(console, Path(args.cache), args.dev_healthy, args.dev_tumours, args.dev_small,
                                    tuple(args.test), args.dev_large, args.test_large)
            save_results("levers", payload)
    if "robust-grow" in args.sections:
        if not (args.cache and args.synthesis):
            sys.exit("error: the robust-grow section reads the candidates section's cache: give --cache and --synthesis")
        payload["robust_grow"] = robust_grow(console, Path(args.cache), json.loads(args.synthesis))
        save_results("levers", payload)
    if "heal-adapt" in args.sections:
        payload["heal_adapt"] = heal_adapt(console, args.adapt_steps)
        save_results("levers", payload)
    payload["models"] = {**payload.get("models", {}), **{spec: _describe(spec) for spec in args.models}}
    save_results("levers", payload)


def _describe(spec: str) -> dict:
    """What a candidate model is (from its model.json): description and training steps."""
    shipped = {"shipped": "default", "detector": "detector"}
    doc_path = (ROOT / "medhdiff" / "models" / shipped[spec] / "model.json") if spec in shipped else Path(spec) / "model.json"
    doc = json.loads(doc_path.read_text())
    return {"description": doc.get("description", ""), "sha256": doc.get("sha256", "")[:12],
            "steps": doc.get("training", {}).get("steps", {}),
            "init_weights_sha256": doc.get("training", {}).get("init_weights_sha256", "")[:12]}


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
