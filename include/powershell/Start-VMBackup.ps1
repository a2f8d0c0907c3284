<#
.SYNOPSIS
    Starts one Windows Server Backup job for one VM, unless a job already runs on the host.
.DESCRIPTION
    Windows runs one WSB job at a time; a second Start-WBBackup fails. The script looks first
    and reports the running job instead of starting, so the caller can wait. Start-WBBackup
    -Async returns at once; the caller follows the job with Get-VMBackupStatus.
    With NotAfterUtc (the backup window's end plus grace) the host's own clock decides: past
    it, no job starts and the answer says the window closed.
#>
param(
    [Parameter(Mandatory)] [string] $VMId,
    [Parameter(Mandatory)] [string] $BackupTarget,
    [string] $NotAfterUtc = ''
)
$now = (Get-Date).ToUniversalTime()
if ($NotAfterUtc -and $now -gt ([datetime]::Parse($NotAfterUtc)).ToUniversalTime()) {
    return @{ started = $false; window_closed = $true; clock_utc = $now.ToString('o') }
}
$vm = Get-VM -Id $VMId
$before = @{ state = "$($vm.State)"; uptime_seconds = [int64]$vm.Uptime.TotalSeconds }
$running = Get-WBJob
if ($running -and "$($running.JobState)" -eq 'Running') {
    return @{ started = $false; clock_utc = $now.ToString('o'); vm = $before; job = @{ job_state = 'Running'; operation = $running.CurrentOperation; start_time_utc = $running.StartTime.ToUniversalTime().ToString('o') } }
}
$policy = New-WBPolicy
$source = Get-WBVirtualMachine | Where-Object { "$($_.VMId)" -eq $VMId }
Add-WBVirtualMachine -Policy $policy -VirtualMachine $source
Add-WBBackupTarget -Policy $policy -Target (New-WBBackupTarget -VolumePath $BackupTarget)
Set-WBVssBackupOption -Policy $policy -VssCopyBackup
Start-WBBackup -Policy $policy -Async -Force
$job = Get-WBJob
@{ started = $true; clock_utc = $now.ToString('o'); vm = $before; job = @{ job_state = "$($job.JobState)"; operation = $job.CurrentOperation; start_time_utc = $job.StartTime.ToUniversalTime().ToString('o') } }
