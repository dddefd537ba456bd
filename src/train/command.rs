//! The command that resumes a run: printed when Ctrl-C stops it, and, from the command
//! that started it (recorded in config.json), when a `--resume` is refused.

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The command line that started a run, as config.json records it: its words without
/// `--out` and `--resume` (which a resume gives anew) and the folder it ran in, which its
/// relative paths are relative to. Text: a command with a word or folder that is not UTF-8
/// is not recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StartCommand {
    words: Vec<String>,
    folder: String,
}

impl StartCommand {
    /// `command` (program and arguments) run in the current folder; None where a word or
    /// the folder is not text.
    pub(super) fn new(command: &[OsString]) -> Option<Self> {
        let words = flags_of(command)
            .into_iter()
            .map(OsString::into_string)
            .collect::<Result<_, _>>()
            .ok()?;
        let folder = std::env::current_dir()
            .ok()?
            .into_os_string()
            .into_string()
            .ok()?;
        Some(Self { words, folder })
    }

    /// The command that resumes the run in `run_dir` (as this process names it), run from
    /// here: in the folder the run started in, its words with `--out run_dir --resume`;
    /// elsewhere, `cd` to that folder first, with `run_dir` made absolute.
    pub(super) fn resume_command(&self, run_dir: &Path) -> String {
        let words: Vec<OsString> = self.words.iter().map(OsString::from).collect();
        let here = std::env::current_dir().ok();
        if here.as_deref() == Some(Path::new(&self.folder)) {
            return String::from_utf8_lossy(&resume_command(&words, run_dir)).into_owned();
        }
        let run_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
        let command = resume_command(&words, &run_dir);
        let cd = shell_quoted(self.folder.as_bytes(), false);
        format!(
            "cd {} && {}",
            String::from_utf8_lossy(&cd),
            String::from_utf8_lossy(&command)
        )
    }
}

/// `command` without its `--out DIR` (or `--out=DIR`) and `--resume`.
pub(super) fn flags_of(command: &[OsString]) -> Vec<OsString> {
    let mut words = Vec::with_capacity(command.len());
    let mut iter = command.iter();
    while let Some(word) = iter.next() {
        let bytes = word.as_bytes();
        if bytes == b"--out" {
            iter.next();
        } else if !(bytes.starts_with(b"--out=") || bytes == b"--resume") {
            words.push(word.clone());
        }
    }
    words
}

/// `flags` (a command without `--out` and `--resume`, see [`flags_of`]) with `--out
/// run_dir --resume`, quoted for a POSIX shell. Bytes, not text: a path need not be
/// UTF-8, and the command must give it back exactly.
pub(super) fn resume_command(flags: &[OsString], run_dir: &Path) -> Vec<u8> {
    let mut command = flags.to_vec();
    command.extend(["--out".into(), run_dir.into(), "--resume".into()]);
    let quoted: Vec<Vec<u8>> = command
        .iter()
        .enumerate()
        .map(|(index, arg)| shell_quoted(arg.as_bytes(), index == 0))
        .collect();
    quoted.join(&b' ')
}

/// `arg` as a POSIX shell reads it back: as is when that is safe, else in single quotes
/// (which keep every byte but the quote itself as it is). A `command_word` with `=` is
/// quoted too: bare, the shell would take it for a variable assignment.
fn shell_quoted(arg: &[u8], command_word: bool) -> Vec<u8> {
    let plain = |byte: &u8| {
        byte.is_ascii_alphanumeric()
            || b"_-./:,+@%".contains(byte)
            || (*byte == b'=' && !command_word)
    };
    if !arg.is_empty() && arg.iter().all(plain) {
        return arg.to_vec();
    }
    let mut quoted = vec![b'\''];
    for &byte in arg {
        match byte {
            b'\'' => quoted.extend(br"'\''"),
            _ => quoted.push(byte),
        }
    }
    quoted.push(b'\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::{flags_of, resume_command, shell_quoted, StartCommand};
    use std::ffi::OsString;
    use std::path::Path;

    fn words(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    /// The run folder and `--resume` come from the resume, in either spelling of `--out`,
    /// and are given once; the command's other words are given back as they were.
    #[test]
    fn the_resume_command_takes_the_flags_and_the_run_folder_it_is_given() {
        let run = Path::new("runs/2026 11 30");
        for command in [
            &["vit", "train", "--epochs", "3"][..],
            &[
                "vit", "train", "--out", "runs/a", "--epochs", "3", "--resume",
            ],
            &["vit", "train", "--out=runs/a", "--epochs", "3"],
        ] {
            let flags = flags_of(&words(command));
            assert_eq!(
                String::from_utf8_lossy(&resume_command(&flags, run)),
                "vit train --epochs 3 --out 'runs/2026 11 30' --resume",
                "{command:?}"
            );
        }
    }

    /// Resumed from the folder it started in, a run's command is its own words; from
    /// another, it goes there first, with the run folder made absolute.
    #[test]
    fn a_recorded_command_resumes_from_the_folder_it_started_in() {
        let here = std::env::current_dir().unwrap();
        let start = StartCommand::new(&words(&["vit", "train", "--out", "runs/a"])).unwrap();
        assert_eq!(
            start.resume_command(Path::new("runs/a")),
            "vit train --out runs/a --resume"
        );
        let elsewhere = StartCommand {
            folder: "/some where".into(),
            ..start
        };
        assert_eq!(
            elsewhere.resume_command(Path::new("runs/a")),
            format!(
                "cd '/some where' && vit train --out {}/runs/a --resume",
                here.display()
            )
        );
    }

    #[test]
    fn arguments_are_quoted_as_a_posix_shell_reads_them_back() {
        for (arg, command_word, quoted) in [
            (&b"--out"[..], false, &b"--out"[..]),
            (b"runs/a-1_b.c:d,e+f@g%h", false, b"runs/a-1_b.c:d,e+f@g%h"),
            // An empty argument is still an argument.
            (b"", false, b"''"),
            (b"a b", false, b"'a b'"),
            (b"it's", false, br"'it'\''s'"),
            (b"$HOME", false, b"'$HOME'"),
            (b"\xff", false, b"'\xff'"),
            // `--lr=1e-3` as is; a program named `a=b` would read as an assignment.
            (b"--lr=1e-3", false, b"--lr=1e-3"),
            (b"a=b", true, b"'a=b'"),
            (b"target/release/vit", true, b"target/release/vit"),
        ] {
            assert_eq!(
                shell_quoted(arg, command_word),
                quoted,
                "{}",
                String::from_utf8_lossy(arg)
            );
        }
        // In a command, the first word alone is the command word.
        assert_eq!(
            String::from_utf8_lossy(&resume_command(
                &words(&["a=b", "--lr=1e-3"]),
                Path::new("runs/a")
            )),
            "'a=b' --lr=1e-3 --out runs/a --resume"
        );
    }
}
