//! `[server]`'s limits on connections (see `server::admission` for how they apply).

/// `MaxStartups START:RATE:FULL`: up to START unauthenticated connections are taken;
/// from START on, a new one is refused with a probability that rises from RATE% to
/// 100% at FULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStartups {
    pub start: usize,
    pub rate: u8,
    pub full: usize,
}

impl Default for MaxStartups {
    fn default() -> Self {
        // OpenSSH's default.
        MaxStartups {
            start: 10,
            rate: 30,
            full: 100,
        }
    }
}

impl std::str::FromStr for MaxStartups {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not START:RATE:FULL (e.g. \"10:30:100\") or a number");
        let parts: Vec<&str> = s.split(':').collect();
        let number = |p: &str| p.trim().parse::<usize>().map_err(|_| bad());
        let limits = match parts.as_slice() {
            [n] => {
                let n = number(n)?;
                MaxStartups {
                    start: n,
                    rate: 100,
                    full: n,
                }
            }
            [start, rate, full] => MaxStartups {
                start: number(start)?,
                rate: u8::try_from(number(rate)?).map_err(|_| bad())?,
                full: number(full)?,
            },
            _ => return Err(bad()),
        };
        if limits.start == 0 || limits.start > limits.full || limits.rate > 100 {
            return Err(format!(
                "{s:?}: START must be at least 1 and at most FULL, and RATE at most 100"
            ));
        }
        Ok(limits)
    }
}

/// Limits on connections, from `[server]` (see `server::admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_startups: MaxStartups,
    /// Unauthenticated connections from one address; `None`: no limit of its own.
    pub per_source_max_startups: Option<usize>,
    /// Authenticated connections of one user; `None`: no limit.
    pub max_connections_per_user: Option<usize>,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_startups: MaxStartups::default(),
            // Below MaxStartups' start, so that one address alone never makes the
            // proxy drop others' connections at random.
            per_source_max_startups: Some(8),
            max_connections_per_user: Some(64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_startups_reads_as_openssh_writes_it() {
        assert_eq!(
            "10:30:100".parse::<MaxStartups>(),
            Ok(MaxStartups {
                start: 10,
                rate: 30,
                full: 100
            })
        );
        assert_eq!(
            "5".parse::<MaxStartups>(),
            Ok(MaxStartups {
                start: 5,
                rate: 100,
                full: 5
            })
        );
        for bad in ["", "a:b:c", "10:30", "0:30:100", "20:30:10", "10:101:100"] {
            assert!(bad.parse::<MaxStartups>().is_err(), "{bad}");
        }
    }
}
