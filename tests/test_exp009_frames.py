"EXP-009's frames, as 22_exp009 makes them on fixture images, read by 25_exp009_report (which is tested on hand-made frames)."



def test_report_reads_the_frames_the_pipeline_makes(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMA_JEPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ISIC_NONHAM_DIR", str(tmp_path))              # the settings file names it; the corpus is given below
    from derma_jepa.data import load_records
    from derma_jepa.exp009 import load_exp009, plan_exp009, pretrain_all, probe_all
    from derma_jepa.exp009_report import budget_table, exp009_table, fig_budget, fig_label_efficiency, label_table
    from derma_jepa.fixture import fixture_dir
    tiny = {"image_size": 48, "patch_size": 8, "batch_size": 8, "warmup": 1, "ckpt_every": 1, "log_every": 1}
    st = load_exp009(objectives=["mae"], pretrain=tiny, steps={"mae": 2, "nocol": 2}, compare=["color_texture"], seeds=[0, 1],
                     budgets=[0.5], variants={"nocol": {"objective": "simclr", "colour": False}},
                     probe={"fractions": [0.1, 1.0], "draws": 2, "n_boot": 10})
    enc = pretrain_all(st, list(load_records(fixture_dir(n_lesions=60, seed=7)).path), tmp_path / "runs", log=lambda m: None)
    plan = plan_exp009(st, enc, tmp_path / "runs", {"data": "fixture", "pairs_per_split": 20})
    probes = probe_all(plan[plan.protocol.eq("symmetric")], st, fixture_dir(n_lesions=300, seed=0), 20260422, enc, log=lambda m: None)
    t = exp009_table(probes, enc)
    assert list(t.index) == ["MAE", "SimCLR (colour = False)", "random init", "color_texture"]
    assert t.loc["MAE", "seeds"] == 2 and "(n=2)" in t.loc["MAE", "probe: balanced acc."]
    assert t.loc["MAE", "pretraining"].startswith("2 steps, 16 images seen")
    lt = label_table(probes)
    assert list(lt.columns) == ["10% labels", "100% labels"] and lt.loc[("MAE", "logistic"), "10% labels"].endswith("(n=4)")
    rephoto = enc.rename(columns={"seed": "pretrain_seed"}).assign(rephoto_auroc=0.6)
    bt = budget_table(probes, rephoto)
    assert bt.loc["MAE"].index.tolist() == [0, 1, 2] and bt.loc[("MAE", 1), "images seen"] == "8"
    assert fig_budget(probes, rephoto) is not None and fig_label_efficiency(probes) is not None
