<#
.SYNOPSIS
    Starts one Windows Server Backup job for one VM, unless a job already runs on the host.
.DESCRIPTION
    Windows runs one WSB job at a time; a second Start-WBBackup fails. The script looks first
    and reports the running job instead of starting, so the caller can wait. Start-WBBackup
    -Async returns at once; the caller follows the job with Get-HvbVMBackupStatus.
    With NotAfterUtc (the backup window's end plus grace) the host's own clock decides: past
    it, no job starts and the answer says the window closed.
.PARAMETER VMId
    The VM's id (Get-VM's Id).
.PARAMETER BackupTarget
    Where the backup goes: a volume (E: or a volume path), or a folder of a network share
    (\\server\share\folder: hyperv_backup.rules.backup_location gives each VM its own, because a share
    folder keeps one version). The folder is created if it does not exist yet.
.PARAMETER NotAfterUtc
    The backup window's end plus grace (ISO 8601, UTC); past it on the host's clock, no job starts.
    Empty: no limit (a manual run, or a forced one).
.OUTPUTS
    One JSON document: started (whether this call started the job); window_closed when NotAfterUtc had
    passed; clock_utc; vm (state, uptime_seconds before the job); job (job_state, operation,
    start_time_utc: the job this call started, or the one already holding the host).
#>
[CmdletBinding()]
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
if ($BackupTarget.StartsWith('\\')) {
    New-Item -ItemType Directory -Path $BackupTarget -Force | Out-Null
    $target = New-WBBackupTarget -NetworkPath $BackupTarget
} else {
    $target = New-WBBackupTarget -VolumePath $BackupTarget
}
Add-WBBackupTarget -Policy $policy -Target $target
Set-WBVssBackupOption -Policy $policy -VssCopyBackup
Start-WBBackup -Policy $policy -Async -Force
$job = Get-WBJob
@{ started = $true; clock_utc = $now.ToString('o'); vm = $before; job = @{ job_state = "$($job.JobState)"; operation = $job.CurrentOperation; start_time_utc = $job.StartTime.ToUniversalTime().ToString('o') } }
