<#
.SYNOPSIS
    Where the backup of one VM stands, in the host's own record: its WSB jobs, the host's boot time,
    the VM, and what Hyper-V logged about the VM's state and checkpoints.
.DESCRIPTION
    Read-only, cheap, and safe to repeat: every step and the copy trigger decide from it, so a retry,
    a re-attached trigger and a fresh worker all see the same facts. The decisions need the host's
    times, not the caller's: a job's start and end (Get-WBJob, Get-WBJob -Previous), the last boot
    (a job that started before it was cut by the restart), and the VM's events (saved, restored,
    checkpoint created, merge started and done) with their times. Event ids: see facts.HostEvent
    (unverified against Microsoft's docs, stated there once).
.PARAMETER VMId
    The VM's id (Get-VM's Id), which survives a rename.
.PARAMETER SinceUtc
    Events from this time on (ISO 8601, UTC); empty: no events.
.PARAMETER WaitSeconds
    Wait on the host, up to this many seconds, until what the caller saw (Seen) changes, then answer:
    the caller learns of a job's end within a second of it, with one request a minute instead of a
    poll every few seconds. 0: answer at once.
.PARAMETER Seen
    The change_key of the caller's previous answer.
.OUTPUTS
    One JSON document: clock_utc, boot_time_utc, host_job, job, jobs, vm, events, change_key
    (hyperv_backup.record.BackupStatus).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $VMId,
    [string] $SinceUtc = '',
    [int] $WaitSeconds = 0,
    [string] $Seen = ''
)
$vm = Get-VM -Id $VMId
$boot = (Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
$changeKey = {
    # the job holding the host (start, state, phase), the VM's checkpoints and disks, the boot: what a waiting step waits on
    $job = Get-WBJob
    $held = $(if ($job -and "$($job.JobState)" -eq 'Running') { "$($job.StartTime.ToUniversalTime().ToString('o')) $($job.JobState) $($job.CurrentOperation)" } else { '-' })
    $checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object { "$($_.Id)" }) -join ','
    $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { $_.Path }) -join ','
    "$held|$checkpoints|$disks|$boot"
}
$until = (Get-Date).AddSeconds($WaitSeconds)
while ($WaitSeconds -gt 0 -and (& $changeKey) -eq $Seen -and (Get-Date) -lt $until) {
    Start-Sleep -Seconds 1
}
$mine = { "$($_.JobType)" -eq 'Backup' -and @($_.JobItems | Where-Object { $_.Name -ceq $vm.Name }).Count -gt 0 }  # a restore test's recovery is not ours
$brief = {
    param($job)
    @{
        job_state = "$($job.JobState)"; operation = $job.CurrentOperation; hresult = $job.HResult
        error_description = $job.ErrorDescription; version_id = $job.VersionId
        start_time_utc = $job.StartTime.ToUniversalTime().ToString('o')
        end_time_utc = $(if ($job.EndTime) { $job.EndTime.ToUniversalTime().ToString('o') })
        bytes_transferred = ($job.JobItems | Measure-Object -Property BytesTransferred -Sum).Sum
        bytes_total = ($job.JobItems | Measure-Object -Property TotalBytes -Sum).Sum
        vms = @($job.JobItems | ForEach-Object { $_.Name })
    }
}
$running = Get-WBJob
if ($running -and "$($running.JobState)" -ne 'Running') { $running = $null }
$jobs = @(@(Get-WBJob -Previous 20 | Where-Object $mine) + @($running | Where-Object $mine)) |
    Where-Object { $_ } | ForEach-Object { & $brief $_ } | Sort-Object { $_.start_time_utc }
$events = @()
if ($SinceUtc) {
    $since = ([datetime]::Parse($SinceUtc, [Globalization.CultureInfo]::InvariantCulture, [Globalization.DateTimeStyles]::AdjustToUniversal)).ToLocalTime()
    $events = @(
        Get-WinEvent -FilterHashtable @{ LogName = 'Microsoft-Windows-Hyper-V-Worker-Admin'; Id = 18510, 18516; StartTime = $since } -ErrorAction SilentlyContinue
        Get-WinEvent -FilterHashtable @{ LogName = 'Microsoft-Windows-Hyper-V-VMMS-Admin'; Id = 18304, 19070, 19080, 19100; StartTime = $since } -ErrorAction SilentlyContinue
    ) | Where-Object { $_.Message.IndexOf("$($vm.Id)", [StringComparison]::OrdinalIgnoreCase) -ge 0 -or $_.Message.Contains("'$($vm.Name)'") } | ForEach-Object {
        @{ log = $_.LogName; id = $_.Id; time_utc = $_.TimeCreated.ToUniversalTime().ToString('o'); message = $_.Message }
    }
}
@{
    clock_utc = (Get-Date).ToUniversalTime().ToString('o')
    boot_time_utc = $boot
    host_job = $(if ($running) { & $brief $running })
    job = $(if ($jobs) { @($jobs)[-1] })
    jobs = @($jobs)
    vm = @{
        id = "$($vm.Id)"; name = $vm.Name; state = "$($vm.State)"; uptime_seconds = [int64]$vm.Uptime.TotalSeconds
        checkpoints = @(Get-VMSnapshot -VM $vm | ForEach-Object { @{ id = "$($_.Id)"; name = $_.Name; type = "$($_.SnapshotType)"; created_utc = $_.CreationTime.ToUniversalTime().ToString('o') } })
        disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { @{ path = $_.Path } })
    }
    events = @($events)
    change_key = & $changeKey
}
