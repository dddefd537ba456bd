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
            return resume_command(&words, run_dir);
        }
        let run_dir = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
        let command = resume_command(&words, &run_dir);
        format!(
            "cd {} && {command}",
            shell_quoted(self.folder.as_bytes(), false)
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
/// run_dir --resume`, quoted for a POSIX shell. A folder whose name starts with `-` is
/// given as `--out=-NAME`: apart, it would read as a flag.
pub(super) fn resume_command(flags: &[OsString], run_dir: &Path) -> String {
    let mut command = flags.to_vec();
    if run_dir.as_os_str().as_bytes().starts_with(b"-") {
        let mut out = OsString::from("--out=");
        out.push(run_dir);
        command.push(out);
    } else {
        command.extend(["--out".into(), run_dir.into()]);
    }
    command.push("--resume".into());
    let quoted: Vec<String> = command
        .iter()
        .enumerate()
        .map(|(index, arg)| shell_quoted(arg.as_bytes(), index == 0))
        .collect();
    quoted.join(" ")
}

/// `arg` as a POSIX shell reads it back: as is when that is safe, else in single quotes
/// (which keep every byte but the quote itself as it is). A `command_word` with `=` is
/// quoted too: bare, the shell would take it for a variable assignment. An argument that
/// is not UTF-8 (a folder name, say) is written by `printf` from octal escapes, so that
/// the command is text that a terminal shows, and a copy of it pastes, as it is.
fn shell_quoted(arg: &[u8], command_word: bool) -> String {
    let plain = |byte: &u8| {
        byte.is_ascii_alphanumeric()
            || b"_-./:,+@%".contains(byte)
            || (*byte == b'=' && !command_word)
    };
    match std::str::from_utf8(arg) {
        Ok(text) if !text.is_empty() && arg.iter().all(plain) => text.to_string(),
        Ok(text) => format!("'{}'", text.replace('\'', r"'\''")),
        Err(_) => {
            // `$(...)` drops trailing newlines: they follow it, quoted, in the same word.
            let newlines = arg.iter().rev().take_while(|&&byte| byte == b'\n').count();
            let escaped: String = (arg[..arg.len() - newlines].iter())
                // printf reads `%` as a conversion and a leading `-` as an option.
                .map(|&byte| match plain(&byte) && !b"%-".contains(&byte) {
                    true => char::from(byte).to_string(),
                    false => format!("\\{byte:03o}"),
                })
                .collect();
            let trailing = match newlines {
                0 => String::new(),
                n => format!("'{}'", "\n".repeat(n)),
            };
            format!("\"$(printf '{escaped}')\"{trailing}")
        }
    }
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
                resume_command(&flags, run),
                "vit train --epochs 3 --out 'runs/2026 11 30' --resume",
                "{command:?}"
            );
        }
        // A folder named like a flag is given with `=`, as clap reads it back.
        assert_eq!(
            resume_command(&words(&["vit", "train"]), Path::new("-weird")),
            "vit train --out=-weird --resume"
        );
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

    /// A command with a word that is not text is not recorded (a refused resume then points
    /// to config.json), rather than recorded with another word in its place.
    #[test]
    fn a_command_with_a_word_that_is_not_text_is_not_recorded() {
        use std::os::unix::ffi::OsStringExt;
        let mut command = words(&["vit", "train", "--data-dir"]);
        command.push(OsString::from_vec(b"data-\xff".to_vec()));
        assert!(StartCommand::new(&command).is_none());
        // A run folder that is not text is no such word: a resume gives `--out` anew.
        let out = OsString::from_vec(b"--out=runs/\xff".to_vec());
        assert!(StartCommand::new(&[OsString::from("vit"), out]).is_some());
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
            // Not UTF-8: from printf, `%`, `-` and `'` escaped too, and trailing newlines
            // (which `$(...)` drops) quoted after it.
            (
                b"-a%b'c \xff",
                false,
                br#""$(printf '\055a\045b\047c\040\377')""#,
            ),
            (b"\xff\n\n", false, b"\"$(printf '\\377')\"'\n\n'"),
            // `--lr=1e-3` as is; a program named `a=b` would read as an assignment.
            (b"--lr=1e-3", false, b"--lr=1e-3"),
            (b"a=b", true, b"'a=b'"),
            (b"target/release/vit", true, b"target/release/vit"),
        ] {
            assert_eq!(
                shell_quoted(arg, command_word).as_bytes(),
                quoted,
                "{}",
                String::from_utf8_lossy(arg)
            );
            // What the shell makes of it is the argument, byte for byte.
            let echoed = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quoted(arg, false)))
                .output()
                .unwrap();
            assert_eq!(echoed.stdout, arg, "{}", String::from_utf8_lossy(arg));
        }
        // In a command, the first word alone is the command word.
        assert_eq!(
            resume_command(&words(&["a=b", "--lr=1e-3"]), Path::new("runs/a")),
            "'a=b' --lr=1e-3 --out runs/a --resume"
        );
    }
}
