pub fn run(_requests: usize, _data_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> { Ok(()) }
