//! The kinds of integration this binary ships: one line each.

collect_connect::kinds!(pub Installed {
    collect_sheets::Sheets,
    collect_sms::Sms,
});
