<#
.SYNOPSIS
    The evidence that a VM's backup landed, and how: backup versions, WSB summary, event log.
.DESCRIPTION
    A job that reports success can still have backed a VM up offline: Hyper-V-VMMS event 10150
    says the guest could not take part. The caller reads the events, not only the HResult.
.PARAMETER VMId
    The VM's id (Get-VM's Id).
.PARAMETER VMName
    The VM's name, to find it in event messages that name it (in quotes, as 'A3') rather than by its id; never
    as a bare substring, which a short name finds inside another VM's id (A3 in "...-4A36-...").
.PARAMETER SinceUtc
    The job's start (ISO 8601, UTC): versions and events from then on.
.OUTPUTS
    One JSON document: summary (last_backup_result_hr, last_successful_backup_time_utc); versions, each
    with version_id, backup_time_utc, target and vms; restore_points, every version on the targets
    that holds this VM (version_id, backup_time_utc), whenever it was taken; events (log, id, time_utc,
    message) of Hyper-V-VMMS 10150 for this VM and of Windows Server Backup (read by hyperv_backup.steps.verify).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $VMId,
    [Parameter(Mandatory)] [string] $VMName,
    [Parameter(Mandatory)] [string] $SinceUtc
)
$since = ([datetime]::Parse($SinceUtc, [Globalization.CultureInfo]::InvariantCulture, [Globalization.DateTimeStyles]::AdjustToUniversal)).ToLocalTime()
$summary = Get-WBSummary
$sets = @(Get-WBBackupSet)
$vmsOf = { param($set) @($set.Application | Where-Object { "$($_.Identifier)" -eq 'Hyper-V' } | ForEach-Object { $_.Component } | ForEach-Object { $_.Name }) }
$events = @(
    Get-WinEvent -FilterHashtable @{ LogName = 'Microsoft-Windows-Hyper-V-VMMS-Admin'; Id = 10150; StartTime = $since } -ErrorAction SilentlyContinue
    Get-WinEvent -FilterHashtable @{ LogName = 'Microsoft-Windows-Backup'; Id = 1, 4, 5, 14, 50; StartTime = $since } -ErrorAction SilentlyContinue
)
@{
    summary = @{ last_backup_result_hr = $summary.LastBackupResultHR; last_successful_backup_time_utc = $summary.LastSuccessfulBackupTime.ToUniversalTime().ToString('o') }
    versions = @($sets | Where-Object { $_.BackupTime -ge $since } | ForEach-Object {
        @{ version_id = $_.VersionId; backup_time_utc = $_.BackupTime.ToUniversalTime().ToString('o'); target = "$($_.BackupTarget)"
           vms = & $vmsOf $_ } })
    restore_points = @($sets | Where-Object { (& $vmsOf $_) -contains $VMName } | ForEach-Object {
        @{ version_id = $_.VersionId; backup_time_utc = $_.BackupTime.ToUniversalTime().ToString('o') } })
    events = @($events | Where-Object { $_.Id -ne 10150 -or $_.Message.IndexOf($VMId, [StringComparison]::OrdinalIgnoreCase) -ge 0 -or $_.Message.Contains("'$VMName'") } | ForEach-Object {
        @{ log = $_.LogName; id = $_.Id; time_utc = $_.TimeCreated.ToUniversalTime().ToString('o'); message = $_.Message } })
}
